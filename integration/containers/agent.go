package containers

import (
	"context"
	"fmt"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// StartLenkwerk runs the agent image on nw as name with the lenkwerk
// command line args (e.g. "agent", "--database-url", …). It does not wait
// for anything: callers wait for what they need (convergence, an exit).
func StartLenkwerk(tb testing.TB, nw *Network, img Images, name string, args ...string) *Container {
	tb.Helper()
	return run(tb, nw, name, img.Agent, testcontainers.WithCmd(args...))
}

// StartLenkwerkWith is StartLenkwerk with options for the container, such
// as ReadOnlyRootfs.
func StartLenkwerkWith(tb testing.TB, nw *Network, img Images, name string, opts []testcontainers.ContainerCustomizer, args ...string) *Container {
	tb.Helper()
	return run(tb, nw, name, img.Agent, append([]testcontainers.ContainerCustomizer{testcontainers.WithCmd(args...)}, opts...)...)
}

// ReadOnlyRootfs runs a container with its root filesystem read-only
// (docker run --read-only), as a hardened deployment runs the agent.
func ReadOnlyRootfs() testcontainers.ContainerCustomizer {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.ReadonlyRootfs = true
	})
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
