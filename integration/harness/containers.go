package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/bagger/lenkwerk/integration/containers"
)

// stopTimeout is how long a container has to stop before it is killed.
const stopTimeout = 10 * time.Second

// ctrs is the containers backend: PostgreSQL, etcd and the agent as
// containers on a network of the Stack's own (integration/containers).
// Host ports change whenever a container restarts.
type ctrs struct {
	tb    testing.TB
	cfg   config
	img   containers.Images
	nw    *containers.Network
	pg    *containers.Postgres
	etcd  *containers.Etcd // nil with PGKV
	agent *containers.Container
}

func startContainers(ctx context.Context, tb testing.TB, cfg config) (*ctrs, error) {
	c := &ctrs{tb: tb, cfg: cfg, img: containers.EnsureImages(tb)}
	c.nw = containers.NewNetwork(tb)
	c.pg = containers.StartPostgres(tb, c.nw, c.img)
	server, err := c.pg.URL(ctx, "postgres", "")
	if err != nil {
		return nil, err
	}
	admin, err := c.pg.URL(ctx, Database, "")
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, server, admin); err != nil {
		return nil, err
	}
	kvInternal := c.pg.InternalURL(Database, "")
	switch cfg.kv {
	case Etcd:
		c.etcd = containers.StartEtcd(tb, c.nw, c.img, 1)
	case EtcdCluster:
		c.etcd = containers.StartEtcd(tb, c.nw, c.img, 3)
	}
	if c.etcd != nil {
		kvInternal = c.etcd.InternalURL()
	}
	args := []string{"agent",
		"--database-url", c.pg.InternalURL(Database, "lenkwerk_agent"),
		"--kv", kvInternal,
		"--log-level", cfg.logLevel,
	}
	if cfg.prefix != "" {
		args = append(args, "--prefix", cfg.prefix)
	}
	c.agent = containers.StartLenkwerk(tb, c.nw, c.img, "agent", args...)
	return c, nil
}

func (c *ctrs) urls(ctx context.Context) (string, string, error) {
	admin, err := c.pg.URL(ctx, Database, "")
	if err != nil {
		return "", "", err
	}
	if c.etcd == nil {
		return admin, admin, nil
	}
	kv, err := c.etcd.URL(ctx)
	return admin, kv, err
}

func (c *ctrs) movesPorts() bool { return true }

func (c *ctrs) startAgent(ctx context.Context) error {
	if running, err := c.agent.Running(ctx); err != nil || running {
		return err
	}
	return c.agent.Start(ctx)
}

func (c *ctrs) killAgent(ctx context.Context) error { return c.agent.Kill(ctx) }

func (c *ctrs) stopAgent(ctx context.Context) error {
	if running, err := c.agent.Running(ctx); err != nil || !running {
		return err
	}
	return c.agent.Stop(ctx, 30*time.Second)
}

func (c *ctrs) agentRunning(ctx context.Context) (bool, error) { return c.agent.Running(ctx) }

func (c *ctrs) agentLog() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := c.agent.Logs(ctx)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), 40)
}

func (c *ctrs) stopStore(ctx context.Context) error {
	if c.etcd == nil {
		return c.pg.Stop(ctx, stopTimeout)
	}
	return c.eachMember(func(i int) error { return c.etcd.Members[i].Stop(ctx, stopTimeout) })
}

func (c *ctrs) startStore(ctx context.Context) error {
	if c.etcd == nil {
		if err := c.pg.Start(ctx); err != nil {
			return err
		}
		return c.pg.WaitReady(ctx)
	}
	// Members wait for each other's votes: start them all, then wait.
	if err := c.eachMember(func(i int) error { return c.etcd.Members[i].Start(ctx) }); err != nil {
		return err
	}
	return c.eachMember(func(i int) error { return c.etcd.WaitHealthy(ctx, i) })
}

// eachMember runs f for every etcd member concurrently.
func (c *ctrs) eachMember(f func(i int) error) error {
	errs := make([]error, len(c.etcd.Members))
	var wg sync.WaitGroup
	for i := range c.etcd.Members {
		wg.Go(func() { errs[i] = f(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *ctrs) member(i int) error {
	if c.etcd == nil {
		return fmt.Errorf("%w: the store is pgkv, not etcd", ErrUnsupported)
	}
	if i < 0 || i >= len(c.etcd.Members) {
		return fmt.Errorf("no etcd member %d", i)
	}
	return nil
}

func (c *ctrs) stopNode(ctx context.Context, i int) error {
	if err := c.member(i); err != nil {
		return err
	}
	return c.etcd.Members[i].Stop(ctx, stopTimeout)
}

func (c *ctrs) startNode(ctx context.Context, i int) error {
	if err := c.member(i); err != nil {
		return err
	}
	return c.etcd.Restart(ctx, i)
}

func (c *ctrs) partition(ctx context.Context) error { return c.agent.Disconnect(ctx) }

func (c *ctrs) heal(ctx context.Context) error { return c.agent.Connect(ctx) }

// dockerAnswers reports whether a Docker engine answers a ping within a
// few seconds.
func dockerAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return false
	}
	defer cli.Close()
	_, err = cli.Ping(ctx, client.PingOptions{})
	return err == nil
}
