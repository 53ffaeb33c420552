package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// agentProcess is a `lenkwerk agent` child process in its own process group.
type agentProcess struct {
	t    *testing.T
	name string
	bin  string
	args []string
	out  *testutil.Buffer

	cmd  *exec.Cmd
	done chan struct{}
}

func startAgentProcess(t *testing.T, bin, name string, args ...string) *agentProcess {
	t.Helper()
	p := &agentProcess{t: t, name: name, bin: bin, args: args, out: &testutil.Buffer{}}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("agent %s: the race detector reported a data race", name)
		}
		if t.Failed() {
			t.Logf("agent %s output:\n%s", name, p.out.String())
		}
	})
	return p
}

func (p *agentProcess) start() {
	p.t.Helper()
	fmt.Fprintf(p.out, "=== start %s\n", time.Now().UTC().Format("15:04:05.000"))
	cmd := exec.Command(p.bin, append([]string{"agent"}, p.args...)...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
}

func (p *agentProcess) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *agentProcess) kill() {
	if p.cmd == nil || !p.running() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and returns the exit code.
func (p *agentProcess) terminate(timeout time.Duration) int {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.kill()
		return -1
	}
}

// metricsURL waits for the metrics address of the process's current run
// in its log.
func (p *agentProcess) metricsURL(t *testing.T) string {
	t.Helper()
	return "http://" + waitMetricsAddr(t, "agent "+p.name, func() string {
		out := p.out.String()
		if i := strings.LastIndex(out, "=== start"); i >= 0 {
			out = out[i:]
		}
		return out
	})
}

var metricsAddrLine = regexp.MustCompile(`serving /metrics.* addr=(\S+)`)

// waitMetricsAddr waits until the agent named what logs the address its
// metrics server listens on (in the output log returns), and returns it.
func waitMetricsAddr(t *testing.T, what string, log func() string) string {
	t.Helper()
	var addr string
	testutil.WaitFor(t, what+" to serve metrics", 30*time.Second, func() bool {
		m := metricsAddrLine.FindStringSubmatch(log())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return addr
}

// haWatcher follows the store's history: every value of /Config/ha (a
// writer's transaction number n) and every transaction checkpoint.
type haWatcher struct {
	mu          sync.Mutex
	ns          []int           // n of every put of /Config/ha, in order
	commits     []pglogrepl.LSN // commit_lsn of every transaction checkpoint
	maxN        int
	watchErrors []string
}

const haKey = "/Config/ha"

func watchHA(ctx context.Context, store *kvdriver.Store, slot string) (*haWatcher, error) {
	_, rev, err := store.List(ctx, "/")
	if err != nil {
		return nil, err
	}
	w := &haWatcher{}
	ckKey := agent.CheckpointKey("", slot)
	ch := store.Watch(ctx, "/", rev)
	go func() {
		for resp := range ch {
			if resp.Err != nil {
				if ctx.Err() == nil {
					w.mu.Lock()
					w.watchErrors = append(w.watchErrors, resp.Err.Error())
					w.mu.Unlock()
				}
				return
			}
			w.mu.Lock()
			for _, ev := range resp.Events {
				if ev.Type != kvdriver.OpPut {
					continue
				}
				switch ev.Key {
				case haKey:
					var row struct {
						Value struct {
							N int `json:"n"`
						} `json:"value"`
					}
					if err := json.Unmarshal(ev.Value, &row); err == nil {
						w.ns = append(w.ns, row.Value.N)
						w.maxN = max(w.maxN, row.Value.N)
					}
				case ckKey:
					var ck agent.Checkpoint
					if err := json.Unmarshal(ev.Value, &ck); err == nil && ck.CommitLSN != 0 {
						w.commits = append(w.commits, ck.CommitLSN)
					}
				}
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *haWatcher) max() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxN
}

// check verifies exactly-once: the writer's n = 1..last each reached the
// store once and in order, and no transaction's checkpoint was written twice
// or went back.
func (w *haWatcher) check(t *testing.T, last int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.watchErrors) > 0 {
		t.Errorf("watch errors: %v", w.watchErrors)
	}
	for i, n := range w.ns {
		if n != i+1 {
			t.Errorf("put %d of %s has n=%d, want %d (a transaction lost or applied twice); history around it: %v", i, haKey, n, i+1, w.ns[max(0, i-5):min(len(w.ns), i+5)])
			break
		}
	}
	if len(w.ns) != last {
		t.Errorf("%d puts of %s, want %d (one per committed transaction)", len(w.ns), haKey, last)
	}
	for i := 1; i < len(w.commits); i++ {
		if w.commits[i] <= w.commits[i-1] {
			t.Errorf("checkpoint %d: commit_lsn %s after %s: a transaction applied twice or out of order", i, w.commits[i], w.commits[i-1])
			break
		}
	}
	if len(w.commits) < last {
		t.Errorf("%d transaction checkpoints, want at least %d", len(w.commits), last)
	}
}

// TestHAFailover runs two real agent processes on one slot and store under
// a steady write load, and fails the active one five times: SIGKILL, loss
// of its database connections (pg_terminate_backend of its walsender, which
// holds the agent lock, and its other connection), and a hang (SIGSTOP). Each time a transaction committed after the
// failure must reach the store within 10 s (the take-over time), and across
// every hand-over each transaction reaches the store exactly once.
func TestHAFailover(t *testing.T) {
	t.Parallel() // waits mostly; private servers
	bin := lenkwerkBinary(t)
	ctx := context.Background()
	// A hung agent is noticed by wal_sender_timeout: its walsender, which
	// holds the agent lock, ends.
	_, admin := migratedCluster(t, ctx, pgtest.Options{Settings: map[string]string{"wal_sender_timeout": "'3s'"}})
	db := connectLocal(t, ctx, admin)
	etcd := etcdtest.New(t)
	store, err := kvdriver.Open(ctx, etcd.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := db.Exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.save_config('seed', '1')`); err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w, err := watchHA(wctx, store, agent.DefaultSlot)
	if err != nil {
		t.Fatal(err)
	}

	agentURL := func(name string) string {
		u, err := url.Parse(admin)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.User("lenkwerk_agent")
		q := u.Query()
		q.Set("application_name", "lw_ha_"+name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	procs := map[string]*agentProcess{}
	for _, name := range []string{"a", "b"} {
		procs[name] = startAgentProcess(t, bin, name, "--database-url", agentURL(name), "--kv", etcd.URL(),
			"--status-interval", "1s", "--metrics-addr", "127.0.0.1:0")
	}
	// active returns the agent streaming the slot.
	active := func() string {
		var app string
		testutil.WaitFor(t, "an agent streaming the slot", 30*time.Second, func() bool {
			err := db.QueryRow(ctx, `SELECT a.application_name FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = $1`, agent.DefaultSlot).Scan(&app)
			return err == nil
		})
		return strings.TrimPrefix(app, "lw_ha_")
	}
	other := map[string]string{"a": "b", "b": "a"}

	// The roles as the agents report them: the active one ready, the
	// standby not (and saying why).
	checkRoles := func(act string) {
		t.Helper()
		testutil.WaitFor(t, "agent "+act+" ready", 20*time.Second, func() bool {
			code, _ := testutil.HTTPGet(t, procs[act].metricsURL(t)+"/readyz")
			return code == http.StatusOK
		})
		// A restarted standby may still be opening its store.
		var code int
		var body string
		testutil.WaitFor(t, "agent "+other[act]+" standby", 20*time.Second, func() bool {
			code, body = testutil.HTTPGet(t, procs[other[act]].metricsURL(t)+"/readyz")
			return strings.Contains(body, "standby")
		})
		if code != http.StatusServiceUnavailable {
			t.Errorf("standby %s: /readyz %d %q, want 503 naming the standby", other[act], code, body)
		}
		for name, want := range map[string]string{act: "active", other[act]: "standby"} {
			_, text := testutil.HTTPGet(t, procs[name].metricsURL(t)+"/metrics")
			if v, ok := testutil.MetricValue(text, "lenkwerk_agent_role", `role="`+want+`"`); !ok || v != 1 {
				t.Errorf("agent %s: lenkwerk_agent_role{role=%q} = %v (found %v), want 1", name, want, v, ok)
			}
		}
	}

	// Streaming (the initial copy done) before the writer starts: every n
	// must come from the stream.
	checkRoles(active())

	// The writer: one transaction per n, sequential, each setting
	// config 'ha' to {"n": n}.
	var committed atomic.Int64
	writerCtx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan error, 1)
	go func() {
		wdb, err := pgx.Connect(ctx, admin)
		if err != nil {
			writerDone <- err
			return
		}
		defer wdb.Close(context.Background())
		for n := 1; writerCtx.Err() == nil; n++ {
			if _, err := wdb.Exec(ctx, `SELECT storage.save_config('ha', json_build_object('n', $1::int))`, n); err != nil {
				writerDone <- err
				return
			}
			committed.Store(int64(n))
			time.Sleep(5 * time.Millisecond) // a steady load, not a flood
		}
		writerDone <- nil
	}()
	testutil.WaitFor(t, "the first transactions in the store", 60*time.Second, func() bool { return w.max() >= 20 })

	for round, mode := range []string{"SIGKILL", "connection loss", "freeze", "SIGKILL", "connection loss"} {
		victim := active()
		failedAt := time.Now()
		switch mode {
		case "SIGKILL":
			procs[victim].kill()
		case "connection loss":
			var n int
			if err := db.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, "lw_ha_"+victim).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n < 2 {
				t.Fatalf("terminated %d backends of agent %s, want its walsender and its other connection", n, victim)
			}
		case "freeze":
			// A hung agent (SIGSTOP: its kernel still answers TCP, so
			// only wal_sender_timeout notices). It stays frozen until it
			// is killed below: resumed, it could still complete a store
			// write it had started (see the agent package documentation).
			if err := syscall.Kill(-procs[victim].cmd.Process.Pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}
		// The take-over: a transaction committed after the failure is in
		// the store.
		target := int(committed.Load()) + 1
		deadline := failedAt.Add(10 * time.Second)
		for w.max() < target {
			if time.Now().After(deadline) {
				t.Fatalf("round %d (%s of agent %s): no transaction committed after the failure reached the store within 10s (store has n=%d, want %d)", round, mode, victim, w.max(), target)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(failedAt)
		now := active()
		t.Logf("round %d: %s of active agent %s: take-over in %v (active now: %s)", round, mode, victim, took.Round(time.Millisecond), now)
		if mode == "SIGKILL" || mode == "freeze" {
			if now == victim {
				t.Fatalf("round %d: %s agent %s still streams", round, mode, victim)
			}
			procs[victim].kill()
			procs[victim].start()
		}
		checkRoles(now)
	}
	stopWriter()
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	last := int(committed.Load())
	if d, err := converge.Wait(ctx, converge.URL(admin), store, converge.Options{Publication: agent.DefaultPublication}, 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, d)
	}
	testutil.WaitFor(t, "the last transaction in the store", 10*time.Second, func() bool { return w.max() >= last })
	for name, p := range procs {
		if code := p.terminate(30 * time.Second); code != 0 {
			t.Errorf("agent %s: SIGTERM: exit code %d, want 0", name, code)
		}
	}
	stopWatch()
	w.check(t, last)
	t.Logf("%d transactions, each in the store exactly once across 5 hand-overs", last)
}
