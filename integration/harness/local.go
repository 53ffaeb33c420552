package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/devstack"
)

// local is the local backend: a private PostgreSQL cluster of the
// machine's binaries, embedded etcd (or pgkv) and lenkwerk child
// processes. Ports are fixed for the Stack's life: restarts keep them.
type local struct {
	tb    testing.TB
	cfg   config
	dir   string
	stack *devstack.Stack
	pg    *devstack.Cluster
	bin   string
}

// startLocal brings up the local stack; bin is the lenkwerk command, built
// before startTimeout's clock started.
func startLocal(ctx context.Context, tb testing.TB, cfg config, bin string) (*local, error) {
	var err error
	l := &local{tb: tb, cfg: cfg, dir: tb.TempDir(), bin: bin}
	opts := devstack.StackOptions{
		// A private cluster per Stack: the slot name is cluster-wide, so
		// two Stacks cannot share one.
		Database: Database,
		Provision: func(ctx context.Context, pg *devstack.Cluster) error {
			if cfg.migrateCmd {
				if out, err := l.run(ctx, "migrate", []string{"migrate", "up", "--database-url", pg.URL(Database, "")}); err != nil {
					return fmt.Errorf("lenkwerk migrate up: %w\n%s", err, out)
				}
				return nil
			}
			return migrate(ctx, pg.URL(Database, ""))
		},
		Etcd: devstack.EtcdOptions{Dir: filepath.Join(l.dir, "etcd"), UnsafeNoFsync: true},
	}
	switch cfg.kv {
	case Etcd:
		opts.EtcdMembers = 1
	case EtcdCluster:
		opts.EtcdMembers = 3
	}
	if l.stack, err = devstack.StartStack(ctx, opts); err != nil {
		return nil, err
	}
	tb.Cleanup(func() {
		if err := l.stack.Close(); err != nil {
			tb.Errorf("harness: stop the local stack: %v", err)
		}
	})
	l.pg = l.stack.Postgres
	return l, nil
}

func (l *local) agentKV() string {
	if u := l.stack.EtcdURL(); u != "" {
		return u
	}
	return l.stack.DatabaseURL("")
}

func (l *local) agentDB() string { return l.stack.DatabaseURL("lenkwerk_agent") }

func (l *local) urls(context.Context) (string, string, error) {
	return l.stack.DatabaseURL(""), l.agentKV(), nil
}

func (l *local) movesPorts() bool { return false }

func (l *local) newProc(name string, args []string) (proc, error) {
	return &localProc{bin: l.bin, log: filepath.Join(l.dir, name+".log"), args: args}, nil
}

func (l *local) run(ctx context.Context, _ string, args []string) (string, error) {
	out, err := groupCommand(ctx, l.bin, args...).CombinedOutput()
	return string(out), err
}

// groupCommand is a command to run to its end in a process group of its
// own, killed whole when ctx ends or the test binary dies.
func groupCommand(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

func (l *local) stopStore(context.Context) error {
	switch {
	case l.stack.Etcd != nil:
		return l.stack.Etcd.Stop()
	case l.stack.EtcdCluster != nil:
		return l.stack.EtcdCluster.Close()
	}
	return l.pg.Stop()
}

func (l *local) killStore(context.Context) error {
	switch {
	case l.stack.Etcd != nil:
		return l.stack.Etcd.Kill()
	case l.stack.EtcdCluster != nil:
		errs := make([]error, len(l.stack.EtcdCluster.Members))
		for i, m := range l.stack.EtcdCluster.Members {
			errs[i] = m.Kill()
		}
		return errors.Join(errs...)
	}
	return fmt.Errorf("%w: the local backend cannot kill PostgreSQL (the pgkv store)", ErrUnsupported)
}

func (l *local) startStore(ctx context.Context) error {
	switch {
	case l.stack.Etcd != nil:
		return l.stack.Etcd.Start(ctx)
	case l.stack.EtcdCluster != nil:
		// Members wait for each other's votes: start them together.
		errs := make([]error, len(l.stack.EtcdCluster.Members))
		var wg sync.WaitGroup
		for i, m := range l.stack.EtcdCluster.Members {
			wg.Go(func() { errs[i] = m.Start(ctx) })
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	return l.pg.Start()
}

func (l *local) stopPostgres(context.Context) error { return l.pg.Stop() }

func (l *local) killPostgres(context.Context) error {
	return fmt.Errorf("%w: the local backend cannot kill PostgreSQL (use StopPostgres, or the containers backend)", ErrUnsupported)
}

func (l *local) startPostgres(context.Context) error { return l.pg.Start() }

func (l *local) member(i int) (*devstack.EtcdServer, error) {
	switch {
	case l.stack.Etcd != nil && i == 0:
		return l.stack.Etcd, nil
	case l.stack.EtcdCluster != nil && i >= 0 && i < len(l.stack.EtcdCluster.Members):
		return l.stack.EtcdCluster.Members[i], nil
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

func (l *local) partition(context.Context, proc) error {
	return fmt.Errorf("%w: the local backend has no network to partition (use the containers backend)", ErrUnsupported)
}

func (l *local) isolate(context.Context, proc) error {
	return fmt.Errorf("%w: the local backend has no network to partition (use the containers backend)", ErrUnsupported)
}

func (l *local) heal(context.Context, proc) error {
	return fmt.Errorf("%w: the local backend has no network to partition (use the containers backend)", ErrUnsupported)
}

// localProc is a lenkwerk child process, its output appended to a file
// across runs.
type localProc struct {
	bin, log string
	args     []string
	p        *process // the current (or last) run
}

func (lp *localProc) start(context.Context) error {
	p, err := startProcess(lp.bin, lp.log, lp.args...)
	if err != nil {
		return err
	}
	lp.p = p
	return nil
}

func (lp *localProc) kill(ctx context.Context) error {
	if lp.p == nil {
		return nil
	}
	return lp.p.signal(ctx, syscall.SIGKILL)
}

func (lp *localProc) term(ctx context.Context) (int, error) {
	if err := lp.p.signal(ctx, syscall.SIGTERM); err != nil {
		// Not gone after SIGTERM within ctx: kill it anyway.
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return -1, errors.Join(err, lp.p.signal(kctx, syscall.SIGKILL))
	}
	return lp.p.cmd.ProcessState.ExitCode(), nil
}

func (lp *localProc) running(context.Context) (bool, error) {
	return lp.p != nil && lp.p.running(), nil
}

func (lp *localProc) exitStatus(context.Context) string {
	if lp.p == nil {
		return "never started"
	}
	if lp.p.running() {
		return "running"
	}
	return lp.p.cmd.ProcessState.String() // "exit status 1", "signal: killed"
}

func (lp *localProc) logs(context.Context) ([]byte, error) {
	b, err := os.ReadFile(lp.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func (lp *localProc) exec(ctx context.Context, args []string) (int, string, error) {
	out, err := groupCommand(ctx, lp.bin, args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out), nil
	}
	if err != nil {
		return -1, string(out), err
	}
	return 0, string(out), nil
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
		fmt.Fprintf(log, "--- %s: exited: %v\n", time.Now().UTC().Format(time.RFC3339Nano), cmd.ProcessState)
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

// signal sends sig and waits for the process to exit. SIGKILL goes to
// the process's group (it has one of its own), so nothing it started
// survives it; SIGTERM to the process, whose shutdown it is.
func (p *process) signal(ctx context.Context, sig syscall.Signal) error {
	if !p.running() {
		return nil
	}
	pid := p.cmd.Process.Pid
	if sig == syscall.SIGKILL {
		pid = -pid
	}
	if err := syscall.Kill(pid, sig); err != nil && p.running() {
		return fmt.Errorf("signal %v: %w", sig, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the agent to exit after %v: %w", sig, ctx.Err())
	}
}
