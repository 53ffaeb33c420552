package agent

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
)

// A TRUNCATE committed while the initial sync creates the slot (PostgreSQL
// 15's snapshot-builder bug, pgtest.SlotPoison) must not stop the mirror:
// the sync's catalog change avoids decoding what the slot cannot
// (healed), and without it (the agent's role lacking TEMPORARY) the slot
// is replaced when streaming fails on it (replaced).
func TestUndecodableSlot(t *testing.T) {
	for _, heal := range []bool{true, false} {
		name := map[bool]string{true: "healed", false: "replaced"}[heal]
		t.Run(name, func(t *testing.T) {
			// A cluster of its own, without autovacuum: any catalog
			// change committed meanwhile (another test's DDL, an
			// auto-analyze writing pg_statistic) heals the poisoned slot
			// too, and the replaced case would test nothing.
			c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"autovacuum": "off"}})
			e := newEnv(t, c.NewDatabase(t))
			e.seed()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			p, err := pgtest.ArmSlotPoison(ctx, e.url)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			cfg := e.config()
			if !heal {
				// The agent's role may not create temporary tables, so
				// the sync cannot commit its catalog change.
				e.exec(`DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$`)
				cfg.DatabaseURL = asUser(t, e.url, "lenkwerk_agent")
			}
			a := e.start(cfg)
			bad, err := p.Spring(ctx, e.slot, `TRUNCATE storage.config`, `SELECT storage.save_config('poisoned', '1')`)
			if err != nil {
				t.Fatal(err)
			}
			if err := bad.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// A write into the truncated table after the copy: the
			// transaction a poisoned slot fails on, for good.
			waitFor(t, "streaming", time.Minute, func() bool { return a.Status().Streaming })
			e.exec(`SELECT storage.save_config('after', '2')`)
			e.converged(converge.Options{})
			if v, ok := e.get("/Config/after"); !ok || jsonField(t, v, "value") != "2" {
				t.Fatalf("/Config/after = %q, %v", v, ok)
			}
			// A session that failed on an undecodable slot leads to
			// the next one's resync with this cause, and only it.
			n := resyncCount(t, a, resyncUndecodable)
			if heal && n != 0 {
				t.Errorf("%v resyncs of an undecodable slot, want none", n)
			}
			if !heal && n == 0 {
				t.Errorf("no resync of an undecodable slot: the poison did not take, so the test proves nothing")
			}
		})
	}
}
