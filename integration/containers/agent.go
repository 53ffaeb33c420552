package containers

import (
	"context"
	"fmt"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// AgentBinary is the lenkwerk binary's path in the agent image (its
// entrypoint), for Container.Exec.
const AgentBinary = "/usr/local/bin/lenkwerk"

// StartLenkwerk runs the agent image on nw as name with the lenkwerk
// command line args (e.g. "agent", "--database-url", …). It does not wait
// for anything: callers wait for what they need (convergence, an exit).
func StartLenkwerk(tb testing.TB, nw *Network, img Images, name string, args ...string) *Container {
	tb.Helper()
	return run(tb, []*Network{nw}, name, img.Agent, testcontainers.WithCmd(args...))
}

// StartLenkwerkWith is StartLenkwerk with options for the container, such
// as ReadOnlyRootfs.
func StartLenkwerkWith(tb testing.TB, nw *Network, img Images, name string, opts []testcontainers.ContainerCustomizer, args ...string) *Container {
	tb.Helper()
	return StartLenkwerkOn(tb, []*Network{nw}, img, name, opts, args...)
}

// StartLenkwerkOn is StartLenkwerkWith on several networks, e.g. an agent
// attached to PostgreSQL's network and to the store's, so that one of them
// can be cut (Container.DisconnectFrom) while the other still works.
func StartLenkwerkOn(tb testing.TB, nws []*Network, img Images, name string, opts []testcontainers.ContainerCustomizer, args ...string) *Container {
	tb.Helper()
	return run(tb, nws, name, img.Agent, append([]testcontainers.ContainerCustomizer{testcontainers.WithCmd(args...)}, opts...)...)
}

// NewLenkwerkOn is StartLenkwerkOn returning an error rather than failing
// tb, for callers that report errors themselves (or run in another
// goroutine). tb's Cleanup still removes the container.
func NewLenkwerkOn(tb testing.TB, nws []*Network, img Images, name string, opts []testcontainers.ContainerCustomizer, args ...string) (*Container, error) {
	return start(tb, nws, name, img.Agent, append([]testcontainers.ContainerCustomizer{testcontainers.WithCmd(args...)}, opts...)...)
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
	return RunLenkwerkOn(tb, []*Network{nw}, img, name, args...)
}

// RunLenkwerkOn is RunLenkwerk on several networks.
func RunLenkwerkOn(tb testing.TB, nws []*Network, img Images, name string, args ...string) (string, error) {
	tb.Helper()
	c := StartLenkwerkOn(tb, nws, img, name, nil, args...)
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
