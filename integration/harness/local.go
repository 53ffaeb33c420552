package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
)

// local is the local backend: a private PostgreSQL cluster of the
// machine's binaries, embedded etcd (or pgkv) and a lenkwerk agent child
// process. Ports are fixed for the Stack's life: restarts keep them.
type local struct {
	tb      testing.TB
	cfg     config
	dir     string
	pg      *pgtest.Cluster
	etcd    *etcdtest.Server  // Etcd
	cluster *etcdtest.Cluster // EtcdCluster
	bin     string
	agent   *process
}

func startLocal(ctx context.Context, tb testing.TB, cfg config) (*local, error) {
	began := time.Now()
	bin, err := lenkwerkBinary(ctx)
	if err != nil {
		return nil, err
	}
	tb.Logf("harness: lenkwerk binary %s (%v)", bin, time.Since(began).Round(10*time.Millisecond))
	l := &local{tb: tb, cfg: cfg, dir: tb.TempDir(), bin: bin}
	// A private cluster per Stack: the slot name is cluster-wide, so two
	// Stacks cannot share one.
	l.pg = pgtest.StartCluster(tb, pgtest.Options{})
	if err := migrate(ctx, l.pg.URL("postgres", ""), l.pg.URL(Database, "")); err != nil {
		return nil, err
	}
	switch cfg.kv {
	case Etcd:
		l.etcd = etcdtest.New(tb)
	case EtcdCluster:
		l.cluster = etcdtest.StartCluster(tb, 3)
	}
	// Registered last, so it runs first: the agent lets go of the slot
	// before PostgreSQL stops.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.stopAgent(ctx); err != nil {
			tb.Errorf("harness: stop the agent: %v", err)
		}
	})
	if err := l.startAgent(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *local) agentKVURL() string {
	switch {
	case l.etcd != nil:
		return l.etcd.URL()
	case l.cluster != nil:
		return l.cluster.URL()
	}
	return l.pg.URL(Database, "")
}

func (l *local) urls(context.Context) (string, string, error) {
	return l.pg.URL(Database, ""), l.agentKVURL(), nil
}

func (l *local) movesPorts() bool { return false }

func (l *local) startAgent(context.Context) error {
	if l.agent != nil && l.agent.running() {
		return nil
	}
	args := []string{"agent",
		"--database-url", l.pg.URL(Database, "lenkwerk_agent"),
		"--kv", l.agentKVURL(),
		"--log-level", l.cfg.logLevel,
	}
	if l.cfg.prefix != "" {
		args = append(args, "--prefix", l.cfg.prefix)
	}
	p, err := startProcess(l.bin, filepath.Join(l.dir, "agent.log"), args...)
	if err != nil {
		return err
	}
	l.agent = p
	return nil
}

func (l *local) killAgent(ctx context.Context) error {
	if l.agent == nil {
		return nil
	}
	return l.agent.signal(ctx, syscall.SIGKILL)
}

func (l *local) stopAgent(ctx context.Context) error {
	if l.agent == nil {
		return nil
	}
	if err := l.agent.signal(ctx, syscall.SIGTERM); err != nil {
		// Not gone after SIGTERM within ctx: kill it anyway.
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return errors.Join(err, l.agent.signal(kctx, syscall.SIGKILL))
	}
	return nil
}

func (l *local) agentRunning(context.Context) (bool, error) {
	return l.agent != nil && l.agent.running(), nil
}

func (l *local) agentLog() string {
	b, err := os.ReadFile(filepath.Join(l.dir, "agent.log"))
	if err != nil {
		return err.Error()
	}
	return tail(string(b), 40)
}

func (l *local) stopStore(context.Context) error {
	switch {
	case l.etcd != nil:
		return l.etcd.Stop()
	case l.cluster != nil:
		return l.cluster.Close()
	}
	return l.pg.Stop()
}

func (l *local) startStore(ctx context.Context) error {
	switch {
	case l.etcd != nil:
		return l.etcd.Start(ctx)
	case l.cluster != nil:
		// Members wait for each other's votes: start them together.
		errs := make([]error, len(l.cluster.Members))
		var wg sync.WaitGroup
		for i, m := range l.cluster.Members {
			wg.Go(func() { errs[i] = m.Start(ctx) })
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	return l.pg.Start()
}

func (l *local) member(i int) (*etcdtest.Server, error) {
	switch {
	case l.etcd != nil && i == 0:
		return l.etcd, nil
	case l.cluster != nil && i >= 0 && i < len(l.cluster.Members):
		return l.cluster.Members[i], nil
	case l.cfg.kv == PGKV:
		return nil, fmt.Errorf("%w: the store is pgkv, not etcd", ErrUnsupported)
	}
	return nil, fmt.Errorf("no etcd member %d", i)
}

func (l *local) stopNode(_ context.Context, i int) error {
	m, err := l.member(i)
	if err != nil {
		return err
	}
	return m.Stop()
}

func (l *local) startNode(ctx context.Context, i int) error {
	m, err := l.member(i)
	if err != nil {
		return err
	}
	return m.Start(ctx)
}

func (l *local) partition(context.Context) error {
	return fmt.Errorf("%w: the local backend has no network to partition (use the containers backend)", ErrUnsupported)
}

func (l *local) heal(context.Context) error {
	return fmt.Errorf("%w: the local backend has no network to partition (use the containers backend)", ErrUnsupported)
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "--- %s: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), filepath.Base(bin), args[0])
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// No agent outlives a test binary that dies without its Cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig and waits for the process to exit.
func (p *process) signal(ctx context.Context, sig syscall.Signal) error {
	if !p.running() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && p.running() {
		return fmt.Errorf("signal %v: %w", sig, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the agent to exit after %v: %w", sig, ctx.Err())
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
