package status_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/status"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup migrates a fresh database and returns its superuser URL, the same
// database as lenkwerk_agent, and an empty store.
func setup(t *testing.T) (admin, agentURL string, store *kvdriver.Store) {
	t.Helper()
	ctx := context.Background()
	admin = pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, admin, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("lenkwerk_agent")
	store, err = kvdriver.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return admin, u.String(), store
}

func exec(t *testing.T, dbURL string, sqls ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

func hasWarning(r *status.Report, substr string) bool {
	for _, w := range r.Warnings {
		if strings.Contains(w, substr) {
			return true
		}
	}
	return false
}

func TestSlotWithoutCheckpoint(t *testing.T) {
	_, agentURL, store := setup(t)
	r, err := status.Read(context.Background(), status.Options{DatabaseURL: agentURL, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if !r.SlotExists || r.Slot != agent.DefaultSlot || r.Plugin != "pgoutput" || r.Active || r.ActivePID != 0 {
		t.Fatalf("slot = %+v, want an existing inactive pgoutput slot lw_agent", r)
	}
	if r.RestartLSN == "" || r.ConfirmedFlushLSN == "" || r.CurrentWALLSN == "" || r.WALStatus != "reserved" || r.SafeWALSize != nil {
		t.Fatalf("slot positions = %+v", r)
	}
	if r.Checkpoint != nil || r.LagBytes != 0 || r.LagSeconds != 0 {
		t.Fatalf("checkpoint = %+v, lag %d bytes %v s; want none", r.Checkpoint, r.LagBytes, r.LagSeconds)
	}
	if len(r.Warnings) != 1 || !hasWarning(r, "no checkpoint") || r.OK() {
		t.Fatalf("warnings = %q, want only the missing checkpoint", r.Warnings)
	}
}

func TestRunningAgent(t *testing.T) {
	admin, agentURL, store := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(agent.Config{DatabaseURL: agentURL, Store: store, StatusInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !a.Status().Streaming {
		if time.Now().After(deadline) {
			t.Fatalf("agent not streaming after 20s: %+v", a.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	exec(t, admin, "SELECT storage.register_pg_instance('db1', 5432, 'bagger')")

	var r *status.Report
	for {
		if r, err = status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store}); err != nil {
			t.Fatal(err)
		}
		if r.Active && r.Checkpoint != nil && a.Status().Transactions > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not streaming with a checkpoint after 20s: %+v, agent %+v", r, a.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.ActivePID == 0 || !r.OK() {
		t.Fatalf("report = %+v, want an active pid and no warnings", r)
	}
	// The database's history and the checkpoint's (readable by the
	// agent's role).
	if r.SystemID == "" || r.Timeline != 1 || r.Checkpoint.SystemID != r.SystemID || r.Checkpoint.Timeline != 1 {
		t.Fatalf("database system %q timeline %d, checkpoint system %q timeline %d; want the same, timeline 1", r.SystemID, r.Timeline, r.Checkpoint.SystemID, r.Checkpoint.Timeline)
	}
	ckpt, _ := pglogrepl.ParseLSN(r.Checkpoint.LSN)
	current, _ := pglogrepl.ParseLSN(r.CurrentWALLSN)
	if want := max(0, int64(current)-int64(ckpt)); r.LagBytes != want {
		t.Fatalf("lag = %d bytes, want current %s - checkpoint %s = %d", r.LagBytes, current, ckpt, want)
	}
}

func TestLag(t *testing.T) {
	_, agentURL, store := setup(t)
	ctx := context.Background()
	exec(t, agentURL, "SELECT 1") // the agent role can log in
	r0, err := status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	current, _ := pglogrepl.ParseLSN(r0.CurrentWALLSN)
	committed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := committed.Add(90 * time.Second)
	for _, c := range []struct {
		name    string
		lsn     pglogrepl.LSN
		bytes   int64 // at least
		seconds float64
	}{
		{"behind", current - 1000, 1000, 90},
		{"ahead", current + 1<<40, 0, 0}, // never negative
	} {
		t.Run(c.name, func(t *testing.T) {
			v, _ := agent.Checkpoint{LSN: c.lsn, CommitLSN: c.lsn - 8, Time: committed}.MarshalJSON()
			if _, err := store.Put(ctx, agent.CheckpointKey("/p", agent.DefaultSlot), v); err != nil {
				t.Fatal(err)
			}
			r, err := status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store, Prefix: "/p", Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			if r.Checkpoint == nil || r.Checkpoint.LSN != c.lsn.String() || r.Checkpoint.CommitLSN != (c.lsn-8).String() || !r.Checkpoint.Time.Equal(committed) {
				t.Fatalf("checkpoint = %+v", r.Checkpoint)
			}
			if r.LagBytes < c.bytes || (c.bytes == 0 && r.LagBytes != 0) || r.LagSeconds != c.seconds {
				t.Fatalf("lag = %d bytes %v s, want %d bytes (at least) %v s", r.LagBytes, r.LagSeconds, c.bytes, c.seconds)
			}
			// 90s behind warns by default (DefaultWarnLag), not with a
			// bound above it.
			if warned := hasWarning(r, "the store is 1m30s behind the database (more than 30s)"); warned != (c.seconds > 30) || len(r.Warnings) != map[bool]int{true: 1}[warned] {
				t.Fatalf("warnings: %q", r.Warnings)
			}
			r, err = status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store, Prefix: "/p", WarnLag: 2 * time.Minute, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK() || r.WarnLagSeconds != 120 {
				t.Fatalf("warnings with --warn-lag 2m: %q (bound %v s)", r.Warnings, r.WarnLagSeconds)
			}
		})
	}
}

func TestRetainedWALWarning(t *testing.T) {
	admin, agentURL, store := setup(t)
	ctx := context.Background()
	// pg_current_wal_lsn() is the WAL written; pgtest's asynchronous
	// commit would leave the insert unwritten for a while.
	exec(t, admin, "SET synchronous_commit = on", "CREATE TABLE filler (x text)", "INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 1000)")
	v, _ := agent.Checkpoint{LSN: 1, Time: time.Now()}.MarshalJSON()
	if _, err := store.Put(ctx, agent.CheckpointKey("", agent.DefaultSlot), v); err != nil {
		t.Fatal(err)
	}
	r, err := status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store, WarnRetained: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r.RetainedWALBytes < 100000 || !r.OK() {
		t.Fatalf("retained %d bytes, warnings %q; want > 100000 and none below 1 MiB", r.RetainedWALBytes, r.Warnings)
	}
	r, err = status.Read(ctx, status.Options{DatabaseURL: agentURL, Store: store, WarnRetained: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 1 || !hasWarning(r, "retains") || !hasWarning(r, "max_slot_wal_keep_size") {
		t.Fatalf("warnings = %q, want one about retained WAL", r.Warnings)
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "\nWARNING: replication slot \"lw_agent\" retains ") {
		t.Fatalf("text output lacks the warning line:\n%s", text.String())
	}
}

func TestMissingSlot(t *testing.T) {
	_, agentURL, store := setup(t)
	r, err := status.Read(context.Background(), status.Options{DatabaseURL: agentURL, Store: store, Slot: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if r.SlotExists || r.Active || r.RestartLSN != "" || r.CurrentWALLSN == "" {
		t.Fatalf("report = %+v, want a missing slot with the current LSN", r)
	}
	if !hasWarning(r, `slot "nope" does not exist`) {
		t.Fatalf("warnings = %q", r.Warnings)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["slot_exists"] != false || m["checkpoint"] != nil || m["warnings"] == nil {
		t.Fatalf("json = %s", b)
	}
}

func TestLostSlot(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"max_slot_wal_keep_size": "'1MB'", "wal_keep_size": "0", "min_wal_size": "'32MB'", "max_wal_size": "'32MB'"}})
	admin := c.NewDatabase(t)
	ctx := context.Background()
	exec(t, admin, "SELECT pg_create_logical_replication_slot('lw_agent', 'pgoutput')")
	store, err := kvdriver.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	r, err := status.Read(ctx, status.Options{DatabaseURL: admin, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if r.SafeWALSize == nil {
		t.Fatalf("safe_wal_size unlimited with max_slot_wal_keep_size = 1MB")
	}
	// Switch WAL segments and checkpoint until the slot loses its WAL.
	deadline := time.Now().Add(30 * time.Second)
	for r.WALStatus != "lost" {
		exec(t, admin, "CREATE TABLE IF NOT EXISTS filler (x text)", "INSERT INTO filler VALUES ('x')", "SELECT pg_switch_wal()", "CHECKPOINT")
		if r, err = status.Read(ctx, status.Options{DatabaseURL: admin, Store: store}); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not lost after 30s: %+v", r)
		}
	}
	if !hasWarning(r, "wal_status lost") {
		t.Fatalf("warnings = %q", r.Warnings)
	}
}

func TestParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1048576", 1 << 20, true}, {"512MB", 512 << 20, true}, {"512MiB", 512 << 20, true},
		{"1GB", 1 << 30, true}, {"1GiB", 1 << 30, true}, {"64kB", 64 << 10, true}, {"2 TB", 2 << 40, true},
		{"10B", 10, true}, {"", 0, false}, {"1.5GB", 0, false}, {"-1", 0, false}, {"1XB", 0, false},
		{"9999999999TB", 0, false},
	} {
		got, err := status.ParseBytes(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d (ok %v)", c.in, got, err, c.want, c.ok)
		}
	}
	if got := status.Bytes(1536).String(); got != "1.5 KiB" {
		t.Errorf("Bytes(1536) = %q", got)
	}
}
