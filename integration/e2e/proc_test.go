package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/harness"
)

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
	bin := filepath.Join(dir, "lenkwerk")
	// LENKWERK_E2E_BUILDFLAGS="-race" runs the agent under the race
	// detector through every scenario; a race report fails the test. The
	// harness runs the binary built here (LENKWERK_BIN).
	args := []string{"build", "-o", bin}
	args = append(args, strings.Fields(os.Getenv("LENKWERK_E2E_BUILDFLAGS"))...)
	build := exec.Command("go", append(args, "./agent/cmd/lenkwerk")...)
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./agent/cmd/lenkwerk: %v\n%s", err, out)
		return 1
	}
	os.Setenv(harness.BinEnv, bin)
	return m.Run()
}

// agentProc is an agent of the stack (a harness.Process: `lenkwerk agent`
// as a child process) with methods that fail the test instead of
// returning errors.
type agentProc struct {
	*harness.Process
	t *testing.T
}

// Start starts the agent; it must not be running.
func (a *agentProc) Start() {
	a.t.Helper()
	if a.Running() {
		a.t.Fatalf("%s started twice", a.Name())
	}
	if err := a.Process.Start(context.Background()); err != nil {
		a.t.Fatal(err)
	}
}

// Running reports whether the agent process is alive.
func (a *agentProc) Running() bool {
	a.t.Helper()
	running, err := a.Process.Running(context.Background())
	if err != nil {
		a.t.Fatal(err)
	}
	return running
}

// Kill SIGKILLs the agent and waits for it to be gone.
func (a *agentProc) Kill() {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Process.Kill(ctx); err != nil {
		a.t.Fatal(err)
	}
}

// Terminate sends SIGTERM and waits up to timeout for the exit; it returns
// the exit code (-1 when the process did not exit in time and was killed).
func (a *agentProc) Terminate(timeout time.Duration) int {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	code, err := a.Stop(ctx)
	if err != nil && ctx.Err() == nil {
		a.t.Fatalf("Terminate: %v", err)
	}
	return code
}

// waitLog waits until the current run has logged a line containing one of
// subs.
func (a *agentProc) waitLog(ctx context.Context, timeout time.Duration, subs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return a.WaitLog(ctx, subs...)
}

// Unexpected returns the exits nobody asked for.
func (a *agentProc) Unexpected() []string {
	return a.UnexpectedExits(context.Background())
}
