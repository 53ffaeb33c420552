package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
)

// Agent is a running agent: a `lenkwerk agent` process or, with
// Options.InProcess, an agent.Agent in this process.
type Agent struct {
	Prefix  string
	Started time.Time

	cmd     *exec.Cmd
	done    chan struct{}
	logPath string

	cancel context.CancelFunc
	runErr chan error
	store  *kvdriver.Store // opened for an in-process agent
	timed  *Timed          // the in-process agent's store
	inproc *agent.Agent

	stopOnce sync.Once
	stopErr  error
}

// StartAgent starts an agent mirroring src into the store under prefix.
func (e *Env) StartAgent(ctx context.Context, src *Source, kind StoreKind, prefix string) (*Agent, error) {
	if e.InProcess {
		store, err := e.OpenStore(ctx, kind)
		if err != nil {
			return nil, err
		}
		var d kvdriver.Driver
		store.As(&d)
		// The timed Store shares the driver; store closes it.
		timed := &Timed{Driver: d}
		a, err := startInProcess(src, kvdriver.NewStore("timed", timed), prefix)
		if err != nil {
			store.Close()
			return nil, err
		}
		a.store, a.timed = store, timed
		return a, nil
	}
	a := &Agent{Prefix: prefix, done: make(chan struct{})}
	a.logPath = filepath.Join(e.Dir, fmt.Sprintf("agent-%d.log", e.next()))
	log, err := os.Create(a.logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	a.cmd = exec.Command(e.Bin, "agent",
		"--database-url", src.AgentURL, "--kv", e.StoreURL(kind),
		"--slot", src.Slot, "--prefix", prefix, "--log-level", "warn")
	// LWBENCH_AGENT_ENV="GOGC=400 …" sets the agent's environment only
	// (the embedded etcd of the baseline keeps the benchmark's).
	if extra := os.Getenv("LWBENCH_AGENT_ENV"); extra != "" {
		a.cmd.Env = append(os.Environ(), strings.Fields(extra)...)
	}
	// The death signal: no agent outlives a benchmark that dies.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	a.Started = time.Now()
	if err := startLogged(a.cmd, log, a.done); err != nil {
		return nil, fmt.Errorf("bench: start lenkwerk agent: %w", err)
	}
	return a, nil
}

// startLogged starts cmd with its output going to log; once the process
// has exited, log is closed and then done. If it does not start, log is
// closed and the error returned.
func startLogged(cmd *exec.Cmd, log *os.File, done chan struct{}) error {
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(done)
	}()
	return nil
}

// startInProcess runs agent.Run on store in this process.
func startInProcess(src *Source, store *kvdriver.Store, prefix string) (*Agent, error) {
	ag, err := agent.New(agent.Config{
		DatabaseURL: src.AgentURL,
		Store:       store,
		Slot:        src.Slot,
		Prefix:      prefix,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{Prefix: prefix, Started: time.Now(), cancel: cancel, runErr: make(chan error, 1), inproc: ag}
	go func() { a.runErr <- ag.Run(ctx) }()
	return a, nil
}

// exited reports an agent process that ended by itself.
func (a *Agent) exited() error {
	if a.cmd == nil {
		select {
		case err := <-a.runErr:
			a.runErr <- err
			return fmt.Errorf("bench: agent.Run returned %v", err)
		default:
			return nil
		}
	}
	select {
	case <-a.done:
		return fmt.Errorf("bench: the agent exited (%v); its log:\n%s", a.cmd.ProcessState, a.LogTail())
	default:
		return nil
	}
}

// PeakRSS is the agent process's peak resident set (VmHWM) in bytes so
// far; 0 for an in-process agent.
func (a *Agent) PeakRSS() (int64, error) {
	if a.cmd == nil {
		return 0, nil
	}
	return peakRSS(a.cmd.Process.Pid)
}

// peakRSS is process pid's peak resident set (VmHWM) in bytes so far.
func peakRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: process status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("bench: VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("bench: no VmHWM in the process's status")
}

// WaitStreaming waits until an in-process agent streams, and returns
// when it saw it.
func (a *Agent) WaitStreaming(ctx context.Context, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for !a.inproc.Status().Streaming {
		if err := a.exited(); err != nil {
			return time.Time{}, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("bench: the agent does not stream after %v (%v)", timeout, a.inproc.Status().Err)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Now(), nil
}

// StoreTime is how long an in-process agent has waited for store writes,
// and how many it made; 0 for a process.
func (a *Agent) StoreTime() (time.Duration, int64) {
	if a.timed == nil {
		return 0, 0
	}
	return a.timed.ApplyTime()
}

// Stop ends the agent (SIGTERM, then SIGKILL after 30s) and waits for it.
// It is idempotent.
func (a *Agent) Stop() error {
	a.stopOnce.Do(func() { a.stopErr = a.stop() })
	return a.stopErr
}

func (a *Agent) stop() error {
	if a.cmd == nil {
		a.cancel()
		err := <-a.runErr
		if a.store != nil {
			a.store.Close()
		}
		return err
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
		return errors.New("bench: the agent did not stop within 30s of SIGTERM")
	}
	return nil
}

// LogTail is the end of an agent process's log.
func (a *Agent) LogTail() string {
	b, _ := os.ReadFile(a.logPath)
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// WaitCheckpoint polls store until the agent's checkpoint exists and its
// LSN is past after (0: any), and returns when it saw it.
func (a *Agent) WaitCheckpoint(ctx context.Context, store *kvdriver.Store, slot string, after pglogrepl.LSN, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ck, ok, err := agent.ReadCheckpoint(ctx, store, a.Prefix, slot)
		if err == nil && ok && ck.LSN > after {
			return time.Now(), nil
		}
		if err := a.exited(); err != nil {
			return time.Time{}, err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("bench: no checkpoint past %s within %v (last: %s, %v, %v)", after, timeout, ck.LSN, ok, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// streaming is what the fan-out and latency scenarios start from: a fresh
// source database, an agent mirroring it into a store under a prefix of
// its own and caught up (its first checkpoint in the store), and a
// connection to the source for the scenario's writes.
type streaming struct {
	src     *Source
	agent   *Agent
	prefix  string
	conn    *pgx.Conn
	control *kvdriver.Store // opened for the wait when the caller had no store
}

// startStreaming starts a streaming under the prefix /<stem><n>. It waits
// for the first checkpoint through watch, or through a store of its own
// (kept open until Close, like a caller's) when watch is nil.
func (e *Env) startStreaming(ctx context.Context, kind StoreKind, stem string, watch *kvdriver.Store) (st *streaming, err error) {
	st = &streaming{}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if watch == nil {
		if st.control, err = e.OpenStore(ctx, kind); err != nil {
			return nil, err
		}
		watch = st.control
	}
	if st.src, err = e.NewSource(ctx); err != nil {
		return nil, err
	}
	st.prefix = fmt.Sprintf("/%s%d", stem, e.next())
	if st.agent, err = e.StartAgent(ctx, st.src, kind, st.prefix); err != nil {
		return nil, err
	}
	if _, err = st.agent.WaitCheckpoint(ctx, watch, st.src.Slot, 0, time.Minute); err != nil {
		return nil, err
	}
	if st.conn, err = pgx.Connect(ctx, st.src.URL); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return st, nil
}

// Close ends what startStreaming started, the last first.
func (st *streaming) Close() {
	if st.conn != nil {
		st.conn.Close(context.Background())
	}
	if st.control != nil {
		st.control.Close()
	}
	if st.agent != nil {
		st.agent.Stop()
	}
	if st.src != nil {
		st.src.Close()
	}
}

// fanoutValue is the storage.config value the fan-out scenarios write: a
// row of a typical size.
const fanoutValue = `{"node": "db1.example.net", "port": 5432, "status": 3, "comment": "benchmark row of a typical size"}`

// writeSteady commits total storage.config rows (lat-<i>), one a
// transaction, at rate per second, calling midway once halfway through,
// and returns when each commit started.
func (st *streaming) writeSteady(ctx context.Context, total int, rate float64, midway func() error) ([]time.Time, error) {
	started := make([]time.Time, total)
	interval := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	for i := range total {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		started[i] = time.Now()
		if _, err := st.conn.Exec(ctx, `SELECT storage.save_config($1, $2::json)`, rowKey("lat", i), fanoutValue); err != nil {
			return nil, fmt.Errorf("steady write %d: %w", i, err)
		}
		if i == total/2 {
			if err := midway(); err != nil {
				return nil, err
			}
		}
	}
	return started, nil
}

// writeRotation rewrites burst storage.config rows (rot-<n>) in one
// transaction, as a servermap rotation does.
func (st *streaming) writeRotation(ctx context.Context, burst int) error {
	if _, err := st.conn.Exec(ctx, `SELECT storage.save_config('rot-' || lpad(g::text, 7, '0'), $1::json) FROM generate_series(0, $2::int - 1) g`, fanoutValue, burst); err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	return nil
}
