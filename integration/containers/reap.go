package containers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/moby/moby/client"
)

// Labels on every container and network this package creates.
const (
	labelTest  = "org.lenkwerk.test"  // the test's name
	labelOwner = "org.lenkwerk.owner" // hostname:pid of the test binary
)

// owner identifies this test binary on this machine.
var owner = func() string {
	h, _ := os.Hostname()
	return h + ":" + strconv.Itoa(os.Getpid())
}()

func labels(test string) map[string]string {
	return map[string]string{labelTest: test, labelOwner: owner}
}

var reapOnce sync.Once

// reapOrphans removes the containers and networks of test binaries of this
// machine that are gone. Without Ryuk nothing else would: a binary killed
// by go test's -timeout (a panic) runs no Cleanup.
func reapOrphans(ctx context.Context) error {
	var err error
	reapOnce.Do(func() { err = reap(ctx) })
	return err
}

func reap(ctx context.Context) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	f := make(client.Filters).Add("label", labelOwner)
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	var errs []error
	for _, c := range cs.Items {
		if orphan(c.Labels[labelOwner]) {
			_, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			errs = append(errs, err)
		}
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	for _, n := range ns.Items {
		if orphan(n.Labels[labelOwner]) {
			_, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// orphan reports whether the owner label names a process of this machine
// that no longer runs.
func orphan(label string) bool {
	host, pid, ok := strings.Cut(label, ":")
	if me, _ := os.Hostname(); !ok || host != me {
		return false
	}
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 || n == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(n, 0), syscall.ESRCH)
}
