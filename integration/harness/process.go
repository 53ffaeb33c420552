package harness

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/integration/containers"
	"github.com/bagger/lenkwerk/kvdriver"
)

// proc is one lenkwerk process of a backend: a child process or a
// container. Its methods other than exec are called under Process.mu.
type proc interface {
	start(ctx context.Context) error
	kill(ctx context.Context) error
	// term sends SIGTERM and waits for the exit (killing the process when
	// ctx ends first, and then returning -1 and ctx's error).
	term(ctx context.Context) (int, error)
	running(ctx context.Context) (bool, error)
	// exitStatus describes how the last run ended (exit code, signal).
	exitStatus(ctx context.Context) string
	// logs returns everything the process wrote, across its runs.
	logs(ctx context.Context) ([]byte, error)
	// exec runs a lenkwerk command where the process runs (in its
	// container, so in its network namespace).
	exec(ctx context.Context, args []string) (int, string, error)
}

// Process is a lenkwerk process of the Stack: its agent (Stack.Agent), a
// second agent (Stack.AddAgent) or any other long-running lenkwerk command
// (Stack.Command, e.g. `lenkwerk kv watch`). On the local backend it is a
// child process; on the containers backend a container attached to the
// Stack's networks. Its output, across restarts, is shown when the test
// fails. Its methods are safe for concurrent use; they are not fault
// levers of the Stack and do not wait for one (a test may kill the agent
// while a lever such as RestartPostgres is under way).
type Process struct {
	name string
	p    proc

	mu       sync.Mutex
	started  bool // Start was called since the last Kill or Stop
	runs     int
	runStart int      // length of the output when the current run started
	exits    []string // exits nobody asked for
}

// Name is the process's name: its container's network alias on the
// containers backend, and the application_name of an agent's connections.
func (p *Process) Name() string { return p.name }

// Start starts the process; a process that runs is left alone.
func (p *Process) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if running, err := p.p.running(ctx); err != nil {
		return fmt.Errorf("harness: %s: %w", p.name, err)
	} else if running {
		return nil
	}
	p.noteExitLocked(ctx)
	// WaitLog looks at what the new run writes: after this.
	out, err := p.p.logs(ctx)
	if err != nil {
		return fmt.Errorf("harness: start %s: read its log: %w", p.name, err)
	}
	if err := p.p.start(ctx); err != nil {
		return fmt.Errorf("harness: start %s: %w", p.name, err)
	}
	p.runs++
	p.started, p.runStart = true, len(out)
	return nil
}

// Kill kills the process (SIGKILL: no clean shutdown) and waits until it
// is gone. A process that does not run is left alone.
func (p *Process) Kill(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noteExitLocked(ctx)
	p.started = false
	if err := p.p.kill(ctx); err != nil {
		return fmt.Errorf("harness: kill %s: %w", p.name, err)
	}
	return nil
}

// Stop sends SIGTERM, a clean shutdown, and waits for the exit; it returns
// the exit code. When ctx ends first the process is killed and Stop
// returns -1 and ctx's error. Stopping a process that does not run is an
// error.
func (p *Process) Stop(ctx context.Context) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	running, err := p.p.running(ctx)
	if err != nil {
		return -1, fmt.Errorf("harness: %s: %w", p.name, err)
	}
	if !running {
		p.noteExitLocked(ctx)
		p.started = false
		return -1, fmt.Errorf("harness: stop %s: it does not run", p.name)
	}
	p.started = false
	code, err := p.p.term(ctx)
	if err != nil {
		return code, fmt.Errorf("harness: stop %s: %w", p.name, err)
	}
	return code, nil
}

// stopIfRunning is Stop for a process that may not run.
func (p *Process) stopIfRunning(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noteExitLocked(ctx)
	p.started = false
	if running, err := p.p.running(ctx); err != nil || !running {
		return err
	}
	_, err := p.p.term(ctx)
	return err
}

// Running reports whether the process runs.
func (p *Process) Running(ctx context.Context) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.running(ctx)
}

// Log returns the process's output so far, across all its runs.
func (p *Process) Log(ctx context.Context) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.logs(ctx)
}

// WaitLog waits until the current run (since the last Start) has written
// a line containing one of subs, or ctx ends: how a test knows the agent
// reached a state it cannot observe otherwise (waiting for the slot,
// retrying a store write).
func (p *Process) WaitLog(ctx context.Context, subs ...string) error {
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		p.mu.Lock()
		out, err := p.p.logs(ctx)
		from := p.runStart
		p.mu.Unlock()
		if err != nil || from > len(out) {
			return false, nil
		}
		for _, sub := range subs {
			if strings.Contains(string(out[from:]), sub) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("harness: waiting for %s to log one of %q: %w", p.name, subs, err)
	}
	return nil
}

// UnexpectedExits lists the exits nobody asked for: the process was
// started and ended without Kill or Stop. An agent is meant to ride every
// fault out, so for an agent the list should stay empty.
func (p *Process) UnexpectedExits(ctx context.Context) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noteExitLocked(ctx)
	return append([]string(nil), p.exits...)
}

// noteExitLocked records an exit of the current run nobody asked for.
func (p *Process) noteExitLocked(ctx context.Context) {
	if !p.started {
		return
	}
	if running, err := p.p.running(ctx); err == nil && !running {
		p.exits = append(p.exits, fmt.Sprintf("%s: run %d exited by itself: %s", p.name, p.runs, p.p.exitStatus(ctx)))
		p.started = false
	}
}

// Exec runs the lenkwerk command args to its end where the process runs —
// on the containers backend inside its container, so with exactly its
// network view (during PartitionAgentFromDB the agent's container reaches
// the store but not PostgreSQL) — and returns its output, stdout and
// stderr together. A non-zero exit is an error. On the containers backend
// the process must run; on the local backend the command is a child
// process of the test, with the test's view of the network.
//
// Exec does not hold up the process's other methods: a test may Kill the
// process while a command runs.
func (p *Process) Exec(ctx context.Context, args ...string) (string, error) {
	code, out, err := p.p.exec(ctx, args)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit code %d", code)
	}
	if err != nil {
		return out, fmt.Errorf("harness: lenkwerk %s in %s: %w", redactArgs(args), p.name, err)
	}
	return out, nil
}

// Container is the process's container on the containers backend, for
// what only Docker tells (Inspect, Top); nil on the local backend and
// before the first Start.
func (p *Process) Container() *containers.Container {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cp, ok := p.p.(interface{ container() *containers.Container }); ok {
		return cp.container()
	}
	return nil
}

// tail is the end of the process's output, at most max bytes, for a
// failed test.
func (p *Process) tail(max int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := p.Log(ctx)
	if err != nil {
		return err.Error()
	}
	return containers.Tail(out, max)
}

// redactArgs is a command line for an error message, with the passwords
// of URLs in it masked.
func redactArgs(args []string) string {
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		if strings.Contains(a, "://") {
			shown[i] = kvdriver.Redact(a)
		} else if k, v, ok := strings.Cut(a, "="); ok && strings.Contains(v, "://") {
			shown[i] = k + "=" + kvdriver.Redact(v)
		}
	}
	return strings.Join(shown, " ")
}
