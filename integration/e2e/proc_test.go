package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lenkwerkBin is the lenkwerk binary built once by TestMain.
var lenkwerkBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	// Most e2e tests wait (for polls, timeouts, restarts) rather than
	// compute: run the parallel ones four at a time unless told otherwise.
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", "4")
	}
	dir, err := os.MkdirTemp("", "lenkwerk-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	lenkwerkBin = filepath.Join(dir, "lenkwerk")
	// LENKWERK_E2E_BUILDFLAGS="-race" runs the agent under the race
	// detector through every scenario; a race report fails the test.
	args := []string{"build", "-o", lenkwerkBin}
	args = append(args, strings.Fields(os.Getenv("LENKWERK_E2E_BUILDFLAGS"))...)
	build := exec.Command("go", append(args, "./agent/cmd/lenkwerk")...)
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./agent/cmd/lenkwerk: %v\n%s", err, out)
		return 1
	}
	// Every test starts a private PostgreSQL cluster (pgtest.StartCluster),
	// which it may restart; the shared one is not used, so no pgtest.Main.
	return m.Run()
}

// syncBuffer collects a process's output for the test log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// size is how many bytes were written so far.
func (s *syncBuffer) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// containsFrom reports whether sub was written at or after offset from.
func (s *syncBuffer) containsFrom(from int, sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return from <= s.b.Len() && bytes.Contains(s.b.Bytes()[from:], []byte(sub))
}

// tail returns at most the last n bytes written.
func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	if len(b) <= n {
		return string(b)
	}
	return fmt.Sprintf("[… %d bytes cut …]\n%s", len(b)-n, b[len(b)-n:])
}

// runLenkwerk runs a short lenkwerk command (migrate, kv) to completion.
func runLenkwerk(t *testing.T, ctx context.Context, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lenkwerkBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// agentProc runs `lenkwerk agent` as a real child process in its own process
// group, so it can be SIGKILLed like a crashed machine would lose it. Its
// output, across restarts, goes to the test log when the test fails.
type agentProc struct {
	t    *testing.T
	args []string
	env  []string
	out  *syncBuffer

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited
	state    *os.ProcessState
	stopping bool // we asked it to go: its exit is expected
	runs     int
	runStart int // offset of the current run's output in out
	// unexpected lists exits nobody asked for (a crash of the agent).
	unexpected []string
}

func newAgent(t *testing.T, args ...string) *agentProc {
	a := &agentProc{t: t, args: append([]string{"agent"}, args...), out: &syncBuffer{}}
	t.Cleanup(func() {
		a.Kill()
		if a.out.containsFrom(0, "WARNING: DATA RACE") {
			t.Errorf("the race detector reported a data race in the agent")
		}
		if t.Failed() {
			t.Logf("lenkwerk agent output (%d runs):\n%s", a.runs, a.out.tail(64<<10))
		}
	})
	return a
}

// Start starts the agent; it must not be running.
func (a *agentProc) Start() {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && a.state == nil {
		a.t.Fatalf("agent started twice")
	}
	a.runs++
	a.runStart = a.out.size()
	fmt.Fprintf(a.out, "=== run %d: %s\n", a.runs, time.Now().UTC().Format("15:04:05.000"))
	cmd := exec.Command(lenkwerkBin, a.args...)
	cmd.Env = append(os.Environ(), a.env...)
	cmd.Stdout = a.out
	cmd.Stderr = a.out
	// Own process group: the kill reaches anything the agent starts. The
	// death signal: no agent outlives a test binary that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		a.t.Fatalf("start lenkwerk agent: %v", err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.state, a.stopping = cmd, done, nil, false
	run := a.runs
	go func() {
		_ = cmd.Wait()
		a.mu.Lock()
		a.state = cmd.ProcessState
		if !a.stopping {
			a.unexpected = append(a.unexpected, fmt.Sprintf("run %d exited by itself: %v", run, cmd.ProcessState))
		}
		a.mu.Unlock()
		fmt.Fprintf(a.out, "=== run %d ended %s: %v\n", run, time.Now().UTC().Format("15:04:05.000"), cmd.ProcessState)
		close(done)
	}()
}

// Running reports whether the agent process is alive.
func (a *agentProc) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil && a.state == nil
}

// Kill SIGKILLs the agent's process group and waits for it to be gone.
func (a *agentProc) Kill() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	if cmd == nil || a.state != nil {
		a.mu.Unlock()
		return
	}
	a.stopping = true
	a.mu.Unlock()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Terminate sends SIGTERM and waits up to timeout for the exit; it returns
// the exit code (-1 when the process did not exit in time and was killed).
func (a *agentProc) Terminate(timeout time.Duration) int {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	if cmd == nil || a.state != nil {
		a.mu.Unlock()
		a.t.Fatalf("Terminate: agent not running")
	}
	a.stopping = true
	a.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		a.Kill()
		return -1
	}
}

// waitLog waits until the current run has logged a line containing one of
// subs: how a test knows the agent reached a state it cannot observe
// otherwise (for example waiting for the slot).
func (a *agentProc) waitLog(ctx context.Context, timeout time.Duration, subs ...string) error {
	a.mu.Lock()
	from := a.runStart
	a.mu.Unlock()
	return waitFor(ctx, timeout, fmt.Sprintf("agent log line with %q", subs), func(context.Context) (bool, error) {
		for _, sub := range subs {
			if a.out.containsFrom(from, sub) {
				return true, nil
			}
		}
		return false, nil
	})
}

// exited returns a channel closed when the running agent exits, or nil if
// it is not running.
func (a *agentProc) exited() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.state != nil {
		return nil
	}
	return a.done
}

// Unexpected returns the exits nobody asked for.
func (a *agentProc) Unexpected() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.unexpected...)
}

// waitFor polls cond until it is true or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: not within %v: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %v", what, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
