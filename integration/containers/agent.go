package containers

import (
	"context"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// AgentBinary is the lenkwerk binary's path in the agent image (its
// entrypoint), for Container.Exec.
const AgentBinary = "/usr/local/bin/lenkwerk"

// NewLenkwerkOn runs the agent image on nws as name with the lenkwerk
// command line args (e.g. "agent", "--database-url", …) and opts for the
// container (such as ReadOnlyRootfs). It does not wait for anything:
// callers wait for what they need (convergence, an exit). It returns an
// error rather than failing tb, for callers that report errors themselves
// (or run in another goroutine); tb's Cleanup removes the container, and
// shows the end of its output when the test failed.
func NewLenkwerkOn(ctx context.Context, tb testing.TB, nws []*Network, img Images, name string, opts []testcontainers.ContainerCustomizer, args ...string) (*Container, error) {
	c, err := start(ctx, tb, nws, name, img.Agent, append([]testcontainers.ContainerCustomizer{testcontainers.WithCmd(args...)}, opts...)...)
	if c != nil {
		// A lenkwerk process's log is what a failed test is read from.
		c.tailBytes = 64 << 10
	}
	return c, err
}

// ReadOnlyRootfs runs a container with its root filesystem read-only
// (docker run --read-only), as a hardened deployment runs the agent.
func ReadOnlyRootfs() testcontainers.ContainerCustomizer {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		hc.ReadonlyRootfs = true
	})
}
