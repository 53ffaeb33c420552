package containers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// Network is a Docker network of its own for one stack; its containers
// reach each other by name.
type Network struct {
	nw *testcontainers.DockerNetwork
}

// NewNetwork creates a network that tb's Cleanup removes (after the
// containers on it, which are registered later and so removed first).
func NewNetwork(tb testing.TB) *Network {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := reapOrphans(ctx); err != nil {
		tb.Logf("removing the containers of earlier, killed test runs: %v", err)
	}
	nw, err := tcnetwork.New(ctx, tcnetwork.WithLabels(labels(tb.Name())))
	testcontainers.CleanupNetwork(tb, nw)
	if err != nil {
		tb.Fatalf("create network: %v", err)
	}
	return &Network{nw: nw}
}

// Name is the network's Docker name.
func (n *Network) Name() string { return n.nw.Name }

// Container is one container of a stack, known on each of its networks by
// Name.
type Container struct {
	Name string
	ctr  *testcontainers.DockerContainer
	// tailBytes is how much of the end of its output a failed test shows.
	tailBytes int
}

// serverTail is how much of a server's output (PostgreSQL, etcd) a failed
// test shows.
const serverTail = 8 << 10

// run creates and starts a container on nws under the network alias name;
// tb's Cleanup removes it (killing it at once) and, when the test failed,
// logs the end of its output first.
func run(tb testing.TB, nws []*Network, name, image string, opts ...testcontainers.ContainerCustomizer) *Container {
	tb.Helper()
	c, err := start(context.Background(), tb, nws, name, image, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// start is run without failing tb, for use from other goroutines. It
// gives up after two minutes or when ctx ends.
func start(ctx context.Context, tb testing.TB, nws []*Network, name, image string, opts ...testcontainers.ContainerCustomizer) (*Container, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var base []testcontainers.ContainerCustomizer
	for _, nw := range nws {
		base = append(base, tcnetwork.WithNetwork([]string{name}, nw.nw))
	}
	opts = append(append(base,
		testcontainers.WithLabels(labels(tb.Name())),
		testcontainers.WithLogger(tclog.TestLogger(tb)),
	), opts...)
	ctr, err := testcontainers.Run(ctx, image, opts...)
	// Registered even when Run failed: a created container is removed too.
	tb.Cleanup(func() {
		if ctr == nil {
			return
		}
		if err := testcontainers.TerminateContainer(ctr, testcontainers.StopTimeout(0)); err != nil {
			tb.Errorf("remove container %s: %v", name, err)
		}
	})
	c := &Container{Name: name, ctr: ctr, tailBytes: serverTail}
	if ctr != nil {
		tb.Cleanup(func() {
			if tb.Failed() {
				tb.Logf("--- end of the output of container %s:\n%s", name, c.tail())
			}
		})
	}
	if err != nil {
		return nil, fmt.Errorf("start container %s (%s): %w", name, image, err)
	}
	return c, nil
}

// ID is the Docker container ID.
func (c *Container) ID() string { return c.ctr.GetContainerID() }

// Endpoint returns the host:port the host reaches the container's port
// (e.g. "5432/tcp") at. It is read afresh: a restarted container has new
// host ports.
func (c *Container) Endpoint(ctx context.Context, port string) (string, error) {
	host, err := retryDocker(ctx, c.ctr.Host)
	if err != nil {
		return "", fmt.Errorf("%s: host: %w", c.Name, err)
	}
	p, err := retryDocker(ctx, func(ctx context.Context) (network.Port, error) { return c.ctr.MappedPort(ctx, port) })
	if err != nil {
		return "", fmt.Errorf("%s: mapped port %s: %w", c.Name, port, err)
	}
	return net.JoinHostPort(host, p.Port()), nil
}

// Stop stops the container, killing it after timeout.
func (c *Container) Stop(ctx context.Context, timeout time.Duration) error {
	if err := c.ctr.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("stop %s: %w", c.Name, err)
	}
	return nil
}

// Kill sends SIGKILL; Start runs the container again.
func (c *Container) Kill(ctx context.Context) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.ContainerKill(ctx, c.ID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		return fmt.Errorf("kill %s: %w", c.Name, err)
	}
	// Kill returns once the signal is sent: wait for the exit.
	return testutil.Poll(ctx, 30*time.Second, c.Name+" exited", func(ctx context.Context) (bool, error) {
		running, err := c.Running(ctx)
		return !running, err
	})
}

// Start starts a stopped or killed container. Its host ports change.
func (c *Container) Start(ctx context.Context) error {
	if err := c.ctr.Start(ctx); err != nil {
		return fmt.Errorf("start %s: %w", c.Name, err)
	}
	return nil
}

// Running reports whether the container runs (ExitCode tells how a
// stopped one ended).
func (c *Container) Running(ctx context.Context) (bool, error) {
	st, err := retryDocker(ctx, c.ctr.State)
	if err != nil {
		return false, fmt.Errorf("state of %s: %w", c.Name, err)
	}
	return st.Running, nil
}

// runs reports whether c was started (is not nil) and its container runs;
// a state Docker cannot tell counts as not running.
func runs(ctx context.Context, c *Container) bool {
	if c == nil {
		return false
	}
	running, err := c.Running(ctx)
	return err == nil && running
}

// runningEndpoints returns the host endpoints (host:port) of port on the
// members that run (see runs), in member order.
func runningEndpoints(ctx context.Context, members []*Container, port string) ([]string, error) {
	var eps []string
	for _, m := range members {
		if !runs(ctx, m) {
			continue
		}
		ep, err := m.Endpoint(ctx, port)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// ExitCode waits for the container to exit and returns its exit code.
func (c *Container) ExitCode(ctx context.Context) (int, error) {
	code := -1
	err := testutil.Poll(ctx, 5*time.Minute, c.Name+" exited", func(ctx context.Context) (bool, error) {
		st, err := retryDocker(ctx, c.ctr.State)
		if err != nil {
			return false, err
		}
		if st.Running || st.Status == "created" {
			return false, nil
		}
		code = st.ExitCode
		return true, nil
	})
	return code, err
}

// DisconnectFrom takes the container off one of its networks: it no longer
// reaches the containers that are only there (nor resolves their names),
// and keeps reaching those of its other networks — a partition between
// some parts of the stack. ConnectTo heals it.
func (c *Container) DisconnectFrom(ctx context.Context, nw *Network) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	_, err = cli.NetworkDisconnect(ctx, nw.nw.ID, client.NetworkDisconnectOptions{Container: c.ID(), Force: true})
	if err != nil {
		return fmt.Errorf("disconnect %s from network %s: %w", c.Name, nw.Name(), err)
	}
	return nil
}

// ConnectTo puts the container on network nw, under its name.
func (c *Container) ConnectTo(ctx context.Context, nw *Network) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	_, err = cli.NetworkConnect(ctx, nw.nw.ID, client.NetworkConnectOptions{
		Container:      c.ID(),
		EndpointConfig: &network.EndpointSettings{Aliases: []string{c.Name}},
	})
	if err != nil {
		return fmt.Errorf("connect %s to network %s: %w", c.Name, nw.Name(), err)
	}
	return nil
}

// Exec runs cmd inside the running container (docker exec), in its
// network namespace: what the container itself reaches, cmd reaches. It
// returns the exit code and the output, stdout and stderr together.
func (c *Container) Exec(ctx context.Context, cmd ...string) (int, string, error) {
	// Errors name the command only: its arguments may hold URLs with
	// passwords.
	code, r, err := c.ctr.Exec(ctx, cmd, tcexec.Multiplexed())
	if err != nil {
		return -1, "", fmt.Errorf("exec %s in %s: %w", cmd[0], c.Name, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return code, string(out), fmt.Errorf("exec %s in %s: output: %w", cmd[0], c.Name, err)
	}
	return code, string(out), nil
}

// Inspect returns what Docker knows of the container (its configuration,
// host configuration, state).
func (c *Container) Inspect(ctx context.Context) (*container.InspectResponse, error) {
	r, err := retryDocker(ctx, c.ctr.Inspect)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", c.Name, err)
	}
	return r, nil
}

// Top lists the container's processes as docker top does, with the ps
// arguments args (e.g. "-o", "pid,uid,gid,comm"; none: ps -ef): a view
// from the host, which works for images without a shell or /proc tools.
func (c *Container) Top(ctx context.Context, args ...string) (titles []string, processes [][]string, err error) {
	cli, err := dockerClient(ctx)
	if err != nil {
		return nil, nil, err
	}
	r, err := cli.ContainerTop(ctx, c.ID(), client.ContainerTopOptions{Arguments: args})
	if err != nil {
		return nil, nil, fmt.Errorf("top %s: %w", c.Name, err)
	}
	return r.Titles, r.Processes, nil
}

// Logs returns the container's output so far, stdout and stderr together.
func (c *Container) Logs(ctx context.Context) ([]byte, error) {
	rc, err := c.ctr.Logs(ctx)
	if err != nil {
		return nil, fmt.Errorf("logs of %s: %w", c.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil && len(b) == 0 {
		return nil, fmt.Errorf("logs of %s: %w", c.Name, err)
	}
	return b, nil
}

// tail is the end of the container's output, for a failed test.
func (c *Container) tail() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := c.Logs(ctx)
	if err != nil {
		return err.Error()
	}
	return Tail(b, c.tailBytes)
}

// Tail is the end of a log for a failed test: its last max bytes, from
// the start of a line, after a note of how much was left out.
func Tail(log []byte, max int) string {
	log = bytes.TrimRight(log, "\n")
	if len(log) <= max {
		return string(log)
	}
	cut := len(log) - max
	if i := bytes.IndexByte(log[cut:], '\n'); i >= 0 {
		cut += i + 1
	}
	return fmt.Sprintf("[… %d bytes, %d lines]\n%s", cut, bytes.Count(log[:cut], []byte("\n")), log[cut:])
}

var (
	cliOnce sync.Once
	cli     *testcontainers.DockerClient
	cliErr  error
)

// dockerClient is one Docker client for the test binary, for what the
// container API lacks (kill, network connect and disconnect).
func dockerClient(ctx context.Context) (*testcontainers.DockerClient, error) {
	cliOnce.Do(func() {
		cli, cliErr = testcontainers.NewDockerClientWithOpts(ctx)
	})
	if cliErr != nil {
		return nil, fmt.Errorf("docker client: %w", cliErr)
	}
	return cli, nil
}

// dockerCallTimeout is how long one attempt of a Docker API call that
// only reads (inspect, state, a mapped port) may take. A daemon busy
// building images and starting other tests' containers on a loaded machine
// has been seen to take longer than a caller's whole deadline for one
// inspect; an attempt that hangs is abandoned and made again rather than
// eating the caller's time.
var dockerCallTimeout = 20 * time.Second

// dockerAttempts is how many times retryDocker tries.
const dockerAttempts = 4

// retryDocker runs a read-only Docker API call, trying again (up to
// dockerAttempts times, while ctx lasts) when an attempt times out or the
// daemon does not answer. A container that does not exist is an answer,
// not a fault, and is returned at once.
func retryDocker[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	pause := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, dockerCallTimeout)
		v, err = call(actx)
		cancel()
		if err == nil || !retriableDocker(ctx, err) || attempt == dockerAttempts {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// retriableDocker reports whether err from a Docker call made under ctx
// is worth another attempt: the attempt's own deadline ran out (not ctx's)
// or the daemon could not be reached or failed.
func retriableDocker(ctx context.Context, err error) bool {
	if ctx.Err() != nil || cerrdefs.IsNotFound(err) || cerrdefs.IsInvalidArgument(err) {
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || client.IsErrConnectionFailed(err) ||
		cerrdefs.IsUnavailable(err) || cerrdefs.IsInternal(err) || cerrdefs.IsDeadlineExceeded(err)
}
