package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// statusSetup migrates a database on a private cluster (slot names are
// cluster-wide) and returns it as lenkwerk_agent, and a pgkv store URL in
// the same database.
func statusSetup(t *testing.T, ctx context.Context) (agentURL, kvURL string) {
	t.Helper()
	_, admin := migratedCluster(t, ctx, pgtest.Options{})
	return withURLUser(t, admin, "lenkwerk_agent"), admin
}

func putCheckpoint(t *testing.T, ctx context.Context, kvURL string) {
	t.Helper()
	store, err := kvdriver.Open(ctx, kvURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v, _ := agent.Checkpoint{LSN: 1 << 40, Time: time.Now()}.MarshalJSON() // ahead: no lag
	if _, err := store.Put(ctx, agent.CheckpointKey("", agent.DefaultSlot), v); err != nil {
		t.Fatal(err)
	}
}

func TestStatusCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agentURL, kvURL := statusSetup(t, ctx)
	run := func(args ...string) (string, bool) {
		t.Helper()
		var out bytes.Buffer
		ok, err := runStatus(ctx, append([]string{"--database-url", agentURL, "--kv", kvURL}, args...), &out)
		if err != nil {
			t.Fatalf("status %q: %v", args, err)
		}
		return out.String(), ok
	}

	out, ok := run()
	if ok || !strings.Contains(out, "\nWARNING: the store has no checkpoint") {
		t.Fatalf("status without checkpoint: ok %v\n%s", ok, out)
	}
	putCheckpoint(t, ctx, kvURL)
	out, ok = run()
	if !ok || strings.Contains(out, "WARNING") {
		t.Fatalf("status with checkpoint: ok %v\n%s", ok, out)
	}
	// Aligned "name: value" lines.
	col := -1
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, _, found := strings.Cut(line, ": ")
		i := strings.Index(line[len(name)+1:], strings.TrimLeft(line[len(name)+1:], " "))
		if !found || (col >= 0 && len(name)+1+i != col) {
			t.Fatalf("unaligned line %q in\n%s", line, out)
		}
		col = len(name) + 1 + i
	}
	for _, want := range []string{"slot:", "exists:", "active:", "plugin:", "restart_lsn:", "confirmed_flush_lsn:", "retained_wal:", "wal_status:", "safe_wal_size:", "checkpoint:", "lag_bytes:", "lag_seconds:", "database:", "checkpoint_of:"} {
		if !strings.Contains(out, "\n"+want) && !strings.HasPrefix(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, ok = run("--json", "--warn-retained", "1B")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	for _, k := range []string{"slot", "slot_exists", "active", "plugin", "restart_lsn", "confirmed_flush_lsn", "current_wal_lsn", "retained_wal_bytes", "wal_status", "safe_wal_size", "checkpoint", "lag_bytes", "lag_seconds", "warn_retained_wal_bytes", "warn_lag_seconds", "warnings", "system_id", "timeline"} {
		if _, has := m[k]; !has {
			t.Errorf("--json lacks %q: %s", k, out)
		}
	}
	if ws, _ := m["warnings"].([]any); ok || len(ws) != 1 || !strings.Contains(ws[0].(string), "retains") {
		t.Errorf("--warn-retained 1B: ok %v, warnings %v", ok, m["warnings"])
	}

	var out2 bytes.Buffer
	for _, bad := range [][]string{{"--warn-retained", "lots"}, {"--warn-retained", "0"}, {"--warn-lag", "0s"}, {"--warn-lag", "soon"}, {"extra"}} {
		if _, err := runStatus(ctx, append([]string{"--database-url", agentURL, "--kv", kvURL}, bad...), &out2); err == nil {
			t.Errorf("status %q: no error", bad)
		}
	}
}

// testStatusExitStatus checks the built binary's exit status: 0 ok, 2
// warning, 1 error. TestBinary runs it.
func testStatusExitStatus(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agentURL, kvURL := statusSetup(t, ctx)
	exit := func(args ...string) (int, string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := exit("--database-url", agentURL, "--kv", kvURL); code != 2 || !strings.Contains(out, "WARNING:") {
		t.Fatalf("without checkpoint: exit %d, want 2\n%s", code, out)
	}
	putCheckpoint(t, ctx, kvURL)
	if code, out := exit("--database-url", agentURL, "--kv", kvURL); code != 0 {
		t.Fatalf("with checkpoint: exit %d, want 0\n%s", code, out)
	}
	if code, out := exit("--database-url", agentURL, "--kv", kvURL, "--slot", "nope"); code != 2 || !strings.Contains(out, `WARNING: replication slot "nope" does not exist`) {
		t.Fatalf("missing slot: exit %d, want 2\n%s", code, out)
	}
	bad := strings.Replace(agentURL, "/t_", "/nosuchdb_", 1)
	if code, out := exit("--database-url", bad, "--kv", kvURL); code != 1 || !strings.Contains(out, "lenkwerk status:") {
		t.Fatalf("unreachable database: exit %d, want 1\n%s", code, out)
	}
}

// An agent blocked on a change its store cannot take: status warns (the
// store falls behind past --warn-lag) and so exits 2, while the agent
// retries; once the change is skipped it catches up and status is clean.
func TestStatusBlockedAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	agentURL, _ := statusSetup(t, ctx)
	name := "statusblocked" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	store, err := mem.Open(ctx, mem.Config{Name: name, Limits: kvdriver.Limits{MaxValueBytes: 2000}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a, err := agent.New(agent.Config{DatabaseURL: agentURL, Store: store, StatusInterval: 200 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer testutil.Go(t, ctx, "agent", a.Run)()
	status := func() (string, bool) {
		t.Helper()
		var out bytes.Buffer
		ok, err := runStatus(ctx, []string{"--database-url", agentURL, "--kv", "mem://" + name, "--warn-lag", "2s"}, &out)
		if err != nil {
			t.Fatal(err)
		}
		return out.String(), ok
	}
	testutil.WaitFor(t, "the agent streams", 30*time.Second, func() bool { return a.Status().Streaming })
	admin := strings.Replace(agentURL, "lenkwerk_agent@", "postgres@", 1)
	conn := connectLocal(t, ctx, admin)
	if _, err := conn.Exec(ctx, `INSERT INTO storage.config (key, value) VALUES ('big', '"`+strings.Repeat("x", 3000)+`"')`); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the agent to block", 30*time.Second, func() bool { return a.Status().Blocked != nil })
	var out string
	testutil.WaitFor(t, "status to warn", 30*time.Second, func() bool {
		var ok bool
		out, ok = status()
		return !ok
	})
	if !strings.Contains(out, "WARNING: the store is") || !strings.Contains(out, "lenkwerk skip") {
		t.Fatalf("status of a blocked agent:\n%s", out)
	}
	if err := agent.AddSkip(ctx, store, "", agent.DefaultSlot, a.Status().Blocked.Skip()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "status to be clean again", 30*time.Second, func() bool { _, ok := status(); return ok })
}
