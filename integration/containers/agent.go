package containers

import (
	"context"
	"fmt"
	"testing"

	"github.com/testcontainers/testcontainers-go"
)

// StartLenkwerk runs the agent image on nw as name with the lenkwerk
// command line args (e.g. "agent", "--database-url", …). It does not wait
// for anything: callers wait for what they need (convergence, an exit).
func StartLenkwerk(tb testing.TB, nw *Network, img Images, name string, args ...string) *Container {
	tb.Helper()
	return run(tb, nw, name, img.Agent, testcontainers.WithCmd(args...))
}

// RunLenkwerk runs a lenkwerk command to its end in a container (e.g.
// "migrate", "up") and returns its output; a non-zero exit is an error.
func RunLenkwerk(tb testing.TB, nw *Network, img Images, name string, args ...string) (string, error) {
	tb.Helper()
	c := StartLenkwerk(tb, nw, img, name, args...)
	ctx := context.Background()
	code, err := c.ExitCode(ctx)
	out, lerr := c.Logs(ctx)
	if err == nil {
		err = lerr
	}
	if err == nil && code != 0 {
		err = fmt.Errorf("lenkwerk %v: exit code %d", args, code)
	}
	return string(out), err
}
