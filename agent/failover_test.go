package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// The database's history changes under the agent: a standby is promoted
// (with or without a copy of the agent's slot), a planned switchover, a
// point-in-time restore. Each ends with the store equal to the new
// primary, by the path the log names; the time from the primary's death to
// the store being equal is logged ("failover figure").

// foEnv is an env on a private primary, with the agent's log kept.
type foEnv struct {
	*env
	primary *pgtest.Cluster
	log     *testutil.Buffer
	round   int
}

// newFailoverEnv starts a primary. Its wal_keep_size keeps, on a standby,
// the WAL a slot copied into it needs (a standby keeps WAL for the slots
// it has, not for one copied in at the cut).
func newFailoverEnv(t *testing.T, opts pgtest.Options) *foEnv {
	t.Helper()
	if opts.Settings == nil {
		opts.Settings = map[string]string{}
	}
	opts.Settings["wal_keep_size"] = "'256MB'"
	primary := pgtest.StartCluster(t, opts)
	e := &foEnv{env: newEnv(t, primary.NewDatabase(t)), primary: primary, log: &testutil.Buffer{}}
	e.seed()
	return e
}

func (e *foEnv) config() Config {
	cfg := e.env.config()
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{e.t}, e.log), &slog.HandlerOptions{Level: slog.LevelInfo}))
	return cfg
}

// takeOver starts the stopped standby promoted at the dead primary's port
// and reconnects the test's connection to it.
func (e *foEnv) takeOver(standby *pgtest.Cluster) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := standby.TakeOver(ctx, e.primary.Port()); err != nil {
		e.t.Fatal(err)
	}
	e.reconnect(e.url)
}

// reconnect replaces the test's connection (its server died) by one to
// url.
func (e *foEnv) reconnect(url string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e.db.Close(ctx)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		e.t.Fatalf("reconnect: %v", err)
	}
	e.t.Cleanup(func() { db.Close(context.Background()) })
	e.db = db
}

// workload runs n transactions of Bagger's functions and plain DML, each
// touching keys earlier rounds wrote (updates, deletes) and new ones.
func (e *foEnv) workload(n int) {
	e.t.Helper()
	e.round++
	r := e.round
	for i := 0; i < n; i++ {
		id := 1000*r + i
		e.exec(`SELECT storage.save_config($1, $2::json)`, fmt.Sprintf("k%d", i%7), fmt.Sprintf(`{"round": %d, "i": %d}`, r, i))
		e.exec(`SELECT storage.save_servermap($1::json)`, fmt.Sprintf(`{"gen": %d}`, id))
		e.exec(`INSERT INTO storage.index (id, indexname, access_method) VALUES ($1, $2, 'btree')`, id, fmt.Sprintf("idx_%d", id))
		if r > 1 { // rows of the previous round
			e.exec(`UPDATE storage.index SET indexname = indexname || '_u' WHERE id = $1`, 1000*(r-1)+i)
			e.exec(`DELETE FROM storage.index WHERE id = $1`, 1000*(r-1)+i+1)
		}
	}
}

// standbyCaughtUp waits until the standby replayed all of the primary's WAL.
func (e *foEnv) standbyCaughtUp() {
	e.t.Helper()
	waitFor(e.t, "the standby to catch up", 60*time.Second, func() bool {
		var ok bool
		err := e.db.QueryRow(context.Background(), `SELECT coalesce(bool_and(replay_lsn >= pg_current_wal_lsn()), false) FROM pg_stat_replication WHERE application_name = 'walreceiver'`).Scan(&ok)
		return err == nil && ok
	})
}

// equalAfter waits until the store equals the database and returns the
// time since t0.
func (e *foEnv) equalAfter(t0 time.Time, what string) time.Duration {
	e.t.Helper()
	if d, err := converge.Wait(context.Background(), converge.URL(e.url), e.store, converge.Options{Publication: DefaultPublication}, 90*time.Second); err != nil {
		st := e.agent.Status()
		e.t.Fatalf("%s: %v\n(agent: checkpoint %s, streaming %v, err %v)\n%s", what, err, st.Checkpoint, st.Streaming, st.Err, d)
	}
	took := time.Since(t0)
	e.t.Logf("failover figure: %s: primary death to store equal: %v", what, took.Round(time.Millisecond))
	return took
}

// fanout runs a second agent into a store of its own, with the slot
// <slot>_<name>, as `lenkwerk agent --kv NAME=URL` does, until the test ends.
func (e *foEnv) fanout(name string) (*Agent, *kvdriver.Store) {
	e.t.Helper()
	store, err := mem.Open(context.Background(), mem.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { store.Close() })
	cfg := e.config()
	cfg.Store, cfg.Slot, cfg.Name = store, StoreSlot(e.slot, name), name
	a := newAgent(e.t, cfg)
	e.t.Cleanup(runAgent(e.t, "fan-out agent "+name, a))
	waitFor(e.t, "the fan-out agent streaming", 30*time.Second, func() bool { return a.Status().Streaming })
	return a, store
}

func (e *foEnv) wantResyncs(a *Agent, want map[string]float64) {
	e.t.Helper()
	for _, c := range resyncCauses {
		if got := resyncCount(e.t, a, c); got != want[c] {
			e.t.Errorf("resyncs{cause=%s} = %v, want %v", c, got, want[c])
		}
	}
}

func (e *foEnv) wantLog(s string) {
	e.t.Helper()
	if !strings.Contains(e.log.String(), s) {
		e.t.Errorf("agent log lacks %q", s)
	}
}

// promote runs scenarios (a) and (b): the standby stops receiving, the
// store gets changes it never sees, the primary dies and the standby takes
// its place (with a copy of the slot taken before the cut when copySlot).
// The store holds changes the database lost: the agent must copy again
// (history_diverged), not stream from its checkpoint, which lies past the
// fork and ahead of the new primary's first changes.
func testPromote(t *testing.T, copySlot bool) {
	e := newFailoverEnv(t, pgtest.Options{})
	// The standby first: its WAL begins with the base backup, and the slot
	// copied into it needs WAL from the slot's restart point on.
	standby := e.primary.StartStandby(t)
	a := e.run(e.config())
	e.workload(20)
	e.converged(converge.Options{})
	e.standbyCaughtUp()
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	if copySlot {
		e.exec(`CHECKPOINT`) // the slot's state on disk
		if err := standby.CopySlot(e.primary, e.slot); err != nil {
			t.Fatal(err)
		}
	}
	e.workload(20) // lost with the primary
	e.converged(converge.Options{})
	lostCk := e.checkpoint()
	t0 := time.Now()
	if err := e.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	e.takeOver(standby)
	// New changes on the new timeline: LSNs below the lost checkpoint.
	e.workload(5)
	name := "(a) promotion without slot copy"
	if copySlot {
		name = "(b) promotion with slot copy"
	}
	e.equalAfter(t0, name)
	e.wantResyncs(a, map[string]float64{resyncNoCheckpoint: 1, resyncHistoryDiverged: 1})
	e.wantLog("the database's history changed under the store")
	ck := e.checkpoint()
	if ck.Timeline != 2 || ck.SystemID != lostCk.SystemID {
		t.Fatalf("checkpoint after promotion: timeline %d system %s, want 2 and %s", ck.Timeline, ck.SystemID, lostCk.SystemID)
	}
	e.workload(5)
	e.converged(converge.Options{})
}

func TestFailoverPromotionWithoutSlotCopy(t *testing.T) { testPromote(t, false) }

func TestFailoverPromotionWithSlotCopy(t *testing.T) { testPromote(t, true) }

// (c) A planned switchover: the standby received everything, and carries
// the slot. The agent streams on from its checkpoint on the new timeline,
// without a copy.
func TestFailoverPlannedSwitchover(t *testing.T) {
	e := newFailoverEnv(t, pgtest.Options{})
	// The standby first: its WAL begins with the base backup, and the slot
	// copied into it needs WAL from the slot's restart point on.
	standby := e.primary.StartStandby(t)
	a := e.run(e.config())
	// A fan-out store: its own slot and checkpoint, the same checks.
	two, twoStore := e.fanout("two")
	e.workload(20)
	e.converged(converge.Options{})
	copies := counterValue(t, a.met.tableCopies)
	t0 := time.Now()
	// A clean stop sends the standby (and the agent) everything.
	if err := e.primary.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []string{e.slot, two.cfg.Slot} {
		if err := standby.CopySlot(e.primary, slot); err != nil {
			t.Fatal(err)
		}
	}
	e.takeOver(standby)
	e.workload(10)
	e.equalAfter(t0, "(c) planned switchover")
	if d, err := converge.Wait(context.Background(), converge.URL(e.url), twoStore, converge.Options{Publication: DefaultPublication}, 60*time.Second); err != nil {
		t.Fatalf("fan-out store: %v\n%s", err, d)
	}
	e.wantResyncs(a, map[string]float64{resyncNoCheckpoint: 1})
	e.wantResyncs(two, map[string]float64{resyncNoCheckpoint: 1})
	if copied := counterValue(t, a.met.tableCopies) - copies; copied != 0 {
		t.Fatalf("switchover: %v tables copied, want none", copied)
	}
	e.wantLog("the checkpoint is on its history: streaming on")
	waitFor(t, "a checkpoint on timeline 2", 30*time.Second, func() bool { return e.checkpoint().Timeline == 2 })
}

// (d) The database is restored to a point before the last changes (base
// backup, archived WAL, recovery_target_lsn): a new timeline forks before
// the store's checkpoint, and the agent copies again. With the slot in the
// backup (a file-system snapshot has pg_replslot; pg_basebackup leaves it
// out), the slot exists after the restore, behind the store: only the
// timeline history tells the store is ahead of the database.
func TestFailoverPointInTimeRestore(t *testing.T) { testPITR(t, false) }

func TestFailoverPointInTimeRestoreWithSlot(t *testing.T) { testPITR(t, true) }

func testPITR(t *testing.T, withSlot bool) {
	archive := pgtest.MakeArchiveDir(t)
	e := newFailoverEnv(t, pgtest.Options{Settings: pgtest.ArchiveSettings(archive)})
	a := e.run(e.config())
	backup := e.primary.BaseBackup(t)
	e.workload(10)
	e.converged(converge.Options{})
	var target string
	if err := e.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	if withSlot {
		e.exec(`CHECKPOINT`)
		if err := backup.InstallSlot(e.primary.SaveSlot(t, e.slot), e.slot); err != nil {
			t.Fatal(err)
		}
	}
	e.workload(10) // lost by the restore
	e.converged(converge.Options{})
	var seg string
	if err := e.db.QueryRow(context.Background(), `SELECT pg_walfile_name(pg_switch_wal())`).Scan(&seg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "WAL archived", 60*time.Second, func() bool {
		var last *string
		err := e.db.QueryRow(context.Background(), `SELECT last_archived_wal FROM pg_stat_archiver`).Scan(&last)
		return err == nil && last != nil && *last >= seg
	})
	t0 := time.Now()
	if err := e.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := backup.RestoreBackup(ctx, archive, target, e.primary.Port()); err != nil {
		t.Fatal(err)
	}
	e.reconnect(e.url)
	e.workload(5)
	name := "(d) point-in-time restore"
	if withSlot {
		name += ", slot in the backup"
	}
	e.equalAfter(t0, name)
	e.wantResyncs(a, map[string]float64{resyncNoCheckpoint: 1, resyncHistoryDiverged: 1})
	e.wantLog("past where timeline 1 ends")
}

// An agent whose URL names both servers (target_session_attrs=read-write)
// follows the promotion without its URL changing; an agent whose URL
// names only the standby says it is a standby and retries.
func TestFailoverMultiHostURL(t *testing.T) {
	e := newFailoverEnv(t, pgtest.Options{})
	standby := e.primary.StartStandby(t)
	dbname := e.url[strings.LastIndex(e.url, "/")+1 : strings.Index(e.url, "?")]
	multi := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=5", e.primary.Port(), standby.Port(), dbname)
	cfg := e.config()
	cfg.DatabaseURL = multi
	a := e.run(cfg)
	e.workload(10)
	e.converged(converge.Options{})
	e.standbyCaughtUp()

	// Only the standby: refused, retried.
	onStandby := e.env.config()
	onStandby.DatabaseURL = strings.Replace(e.url, fmt.Sprint(e.primary.Port()), fmt.Sprint(standby.Port()), 1)
	onStandby.Slot = e.slot + "_s"
	sa := newAgent(t, onStandby)
	stopSA := runAgent(t, "standby-only agent", sa)
	waitFor(t, "the standby-only agent to say so", 30*time.Second, func() bool { return errors.Is(sa.Status().Err, errStandby) })
	stopSA()

	t0 := time.Now()
	if err := e.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	e.url = strings.Replace(e.url, fmt.Sprint(e.primary.Port()), fmt.Sprint(standby.Port()), 1)
	e.reconnect(e.url)
	e.workload(5)
	e.equalAfter(t0, "multi-host URL, promotion in place")
	waitFor(t, "the agent on timeline 2", 30*time.Second, func() bool { return a.Status().Timeline == 2 })
	if ck := e.checkpoint(); ck.Timeline != 2 || ck.LSN == pglogrepl.LSN(0) {
		t.Fatalf("checkpoint %+v, want timeline 2", ck)
	}
}

// A slot copied to the standby long before the cut, whose WAL the standby
// never had (its base backup began later): the promoted server cannot
// stream it ("requested WAL segment … has already been removed"), and the
// agent copies again instead of retrying for ever.
func TestFailoverSlotCopyWithoutWAL(t *testing.T) {
	e := newFailoverEnv(t, pgtest.Options{})
	a := e.run(e.config())
	e.workload(5)
	e.converged(converge.Options{})
	e.exec(`CHECKPOINT`)
	early := e.primary.SaveSlot(t, e.slot)
	// The slot's restart point falls in a segment the standby will not
	// have.
	e.exec(`SELECT pg_switch_wal()`)
	e.exec(`SELECT storage.save_config('between', '1')`)
	e.exec(`SELECT pg_switch_wal()`)
	standby := e.primary.StartStandby(t)
	e.workload(5)
	e.converged(converge.Options{})
	t0 := time.Now()
	if err := e.primary.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := standby.InstallSlot(early, e.slot); err != nil {
		t.Fatal(err)
	}
	e.takeOver(standby)
	e.workload(5)
	e.equalAfter(t0, "slot copy without its WAL")
	e.wantResyncs(a, map[string]float64{resyncNoCheckpoint: 1, resyncSlotWALGone: 1})
	e.wantLog("the WAL it needs is gone")
}

// (e) With SyncStandbys the store gets a transaction only once the named
// standby flushed it: the standby stops receiving, a change committed on
// the primary is held back, the primary dies and the standby (carrying the
// slot) takes over. The agent streams on; a watcher of the store sees no
// value ever taken back, and never the lost change.
func TestFailoverSyncStandbys(t *testing.T) {
	e := newFailoverEnv(t, pgtest.Options{})
	standby := e.primary.StartStandby(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var events []kvdriverEvent
	watch := e.store.Watch(ctx, "/", 0)
	go func() {
		for resp := range watch {
			mu.Lock()
			for _, ev := range resp.Events {
				events = append(events, kvdriverEvent{ev.Key, string(ev.Value)})
			}
			mu.Unlock()
		}
	}()
	cfg := e.config()
	cfg.SyncStandbys = []string{"walreceiver"}
	a := e.run(cfg)
	e.workload(20)
	e.converged(converge.Options{})
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	e.exec(`CHECKPOINT`)
	if err := standby.CopySlot(e.primary, e.slot); err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT storage.save_config('held', '"lost"')`)
	waitFor(t, "the agent to hold the change back", 30*time.Second, func() bool { return a.Status().WaitingForStandbys != 0 })
	if v, ok := e.get("/Config/held"); ok {
		t.Fatalf("/Config/held = %s in the store before the standby flushed it", v)
	}
	t0 := time.Now()
	if err := e.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer tcancel()
	if err := standby.TakeOver(tctx, e.primary.Port()); err != nil {
		t.Fatal(err)
	}
	e.reconnect(e.url)
	// The new primary's standby, under the name the agent waits for (as
	// Patroni rebuilds a replica); until it streams the agent holds back.
	standby.StartStandby(t)
	e.workload(10)
	e.equalAfter(t0, "(e) --sync-standbys, promotion with slot copy, new standby")
	e.wantResyncs(a, map[string]float64{resyncNoCheckpoint: 1})
	e.wantLog("the checkpoint is on its history: streaming on")
	mu.Lock()
	defer mu.Unlock()
	if len(events) == 0 {
		t.Fatal("the watcher saw nothing")
	}
	if msg := takenBack(events); msg != "" {
		t.Fatal(msg)
	}
}

type kvdriverEvent struct{ key, value string }

// takenBack finds a value taken back in the store's history: the lost
// change seen at all, a /Servermap generation going down, a /Config/k*
// value of the workload going back to an earlier (round, i), an index row
// deleted coming back.
func takenBack(events []kvdriverEvent) string {
	type ri struct{ round, i int }
	cfg := map[string]ri{}
	gen := -1
	deleted := map[string]bool{}
	for n, ev := range events {
		switch {
		case ev.key == "/Config/held":
			return fmt.Sprintf("event %d: the lost change reached the store: %s", n, ev.value)
		case ev.key == "/Servermap" && ev.value != "":
			var v struct {
				ServerMap struct {
					Gen int `json:"gen"`
				} `json:"server_map"`
			}
			if err := json.Unmarshal([]byte(ev.value), &v); err != nil {
				return fmt.Sprintf("event %d: %s: %v", n, ev.value, err)
			}
			if v.ServerMap.Gen < gen {
				return fmt.Sprintf("event %d: /Servermap generation %d after %d", n, v.ServerMap.Gen, gen)
			}
			gen = v.ServerMap.Gen
		case strings.HasPrefix(ev.key, "/Config/k") && ev.value != "":
			var v struct {
				Value ri `json:"value"`
			}
			var raw struct {
				Value struct {
					Round int `json:"round"`
					I     int `json:"i"`
				} `json:"value"`
			}
			if err := json.Unmarshal([]byte(ev.value), &raw); err != nil {
				return fmt.Sprintf("event %d: %s: %v", n, ev.value, err)
			}
			v.Value = ri{raw.Value.Round, raw.Value.I}
			if old, ok := cfg[ev.key]; ok && (v.Value.round < old.round || (v.Value.round == old.round && v.Value.i < old.i)) {
				return fmt.Sprintf("event %d: %s went back from %v to %v", n, ev.key, old, v.Value)
			}
			cfg[ev.key] = v.Value
		case strings.HasPrefix(ev.key, "/Index/"):
			if ev.value == "" {
				deleted[ev.key] = true
			} else if deleted[ev.key] {
				return fmt.Sprintf("event %d: %s deleted, then back", n, ev.key)
			}
		}
	}
	return ""
}
