package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
)

// A slot the server invalidated (max_slot_wal_keep_size exceeded while
// the agent was stopped: wal_status lost) cannot be streamed again; the
// agent replaces it and copies every table, cause slot_invalidated,
// instead of retrying for ever, and the store ends equal to the database,
// changes made while it was away included.
func TestInvalidatedSlot(t *testing.T) {
	// A cluster of its own: a small max_slot_wal_keep_size, and nothing
	// else (wal_keep_size) keeping WAL, so a few switched segments and a
	// checkpoint invalidate a stopped agent's slot.
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "'1MB'", "wal_keep_size": "0", "min_wal_size": "'32MB'", "max_wal_size": "'32MB'",
	}})
	e := newEnv(t, c.NewDatabase(t))
	e.seed()
	logs := &testutil.Buffer{}
	cfg := e.config()
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, logs), &slog.HandlerOptions{Level: slog.LevelInfo}))
	e.run(cfg)
	e.converged(converge.Options{})
	e.stop()

	e.exec(`SELECT storage.save_config('retention', '{"days": 7}')`)
	e.exec(`DELETE FROM storage.index_field WHERE id = 12`)
	walStatus := func() string {
		var s *string
		if err := e.db.QueryRow(context.Background(), `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s == nil {
			return "<null>"
		}
		return *s
	}
	// Switch WAL segments and checkpoint, writing changes the store does
	// not have yet, until the server invalidates the slot.
	deadline := time.Now().Add(time.Minute)
	for i := 0; walStatus() != "lost"; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("slot not lost after a minute: wal_status %s", walStatus())
		}
		e.exec(fmt.Sprintf(`SELECT storage.save_config('away_%d', '%d')`, i, i))
		e.exec(`SELECT pg_switch_wal()`)
		e.exec(`CHECKPOINT`)
	}
	e.exec(`SELECT storage.save_config('after_lost', '1')`)

	a := e.start(cfg)
	e.converged(converge.Options{})
	for _, cause := range resyncCauses {
		want := 0.0
		if cause == resyncSlotInvalidated {
			want = 1
		}
		if got := resyncCount(t, a, cause); got != want {
			t.Errorf("resyncs{cause=%s} = %v, want %v", cause, got, want)
		}
	}
	var published float64
	if err := e.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_tables WHERE pubname = $1`, DefaultPublication).Scan(&published); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, a.met.tableCopies); got != published || published == 0 {
		t.Errorf("tables_copied_total = %v, want every published table (%v)", got, published)
	}
	// One warning names the slot, the cause and the way to avoid it.
	warned := false
	for line := range strings.Lines(logs.String()) {
		n := 0
		for _, s := range []string{"level=WARN", "replication slot was invalidated", "cause=" + resyncSlotInvalidated, "slot=" + e.slot, "raise max_slot_wal_keep_size"} {
			if strings.Contains(line, s) {
				n++
			}
		}
		warned = warned || n == 5
	}
	if !warned {
		t.Errorf("no warning naming the slot, the cause and max_slot_wal_keep_size in the agent log")
	}
	// The new slot streams.
	if s := walStatus(); s == "lost" {
		t.Fatalf("slot still lost after the resync")
	}
	e.exec(`SELECT storage.save_config('after_resync', '2')`)
	e.converged(converge.Options{})
	if v, ok := e.get("/Config/after_resync"); !ok || jsonField(t, v, "value") != "2" {
		t.Fatalf("/Config/after_resync = %q, %v", v, ok)
	}
}
