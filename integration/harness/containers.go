package harness

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/bagger/lenkwerk/integration/containers"
)

// stopTimeout is how long a container has to stop before it is killed.
const stopTimeout = 10 * time.Second

// agentStopTimeout is how long an agent has to exit after SIGTERM.
const agentStopTimeout = 30 * time.Second

// ctrs is the containers backend: PostgreSQL, etcd and lenkwerk processes
// as containers, through integration/containers. PostgreSQL and the store
// are on networks of their own, lenkwerk containers on both, so that
// PartitionAgentFromDB can cut exactly the agent's way to PostgreSQL.
// Host ports change whenever a container restarts.
type ctrs struct {
	tb    testing.TB
	cfg   config
	img   containers.Images
	dbNet *containers.Network // PostgreSQL
	kvNet *containers.Network // etcd; nil with PGKV
	pg    *containers.Postgres
	etcd  *containers.Etcd // nil with PGKV
}

// startContainers starts the servers from img, which EnsureImages built.
func startContainers(ctx context.Context, tb testing.TB, cfg config, img containers.Images) (*ctrs, error) {
	c := &ctrs{tb: tb, cfg: cfg, img: img}
	c.dbNet = containers.NewNetwork(tb)
	c.pg = containers.StartPostgres(tb, c.dbNet, c.img)
	server, err := c.pg.URL(ctx, "postgres", "")
	if err != nil {
		return nil, err
	}
	if err := createDatabase(ctx, server); err != nil {
		return nil, err
	}
	if cfg.migrateCmd {
		// The migrate job of a deployment: a container of its own.
		if out, err := c.run(ctx, "migrate", []string{"migrate", "up", "--database-url", c.pg.InternalURL(Database, "")}); err != nil {
			return nil, fmt.Errorf("migrate job: %w\n%s", err, out)
		}
	} else {
		admin, err := c.pg.URL(ctx, Database, "")
		if err != nil {
			return nil, err
		}
		if err := migrate(ctx, admin); err != nil {
			return nil, err
		}
	}
	switch cfg.kv {
	case Etcd, EtcdCluster:
		n := 1
		if cfg.kv == EtcdCluster {
			n = 3
		}
		c.kvNet = containers.NewNetwork(tb)
		c.etcd = containers.StartEtcd(tb, c.kvNet, c.img, n)
	}
	return c, nil
}

// networks are the networks of lenkwerk containers.
func (c *ctrs) networks() []*containers.Network {
	if c.kvNet == nil {
		return []*containers.Network{c.dbNet}
	}
	return []*containers.Network{c.dbNet, c.kvNet}
}

// urls returns "" for a server that does not run (or has no host port):
// the Stack keeps the URL it had.
func (c *ctrs) urls(ctx context.Context) (string, string, error) {
	var admin string
	if running, err := c.pg.Running(ctx); err != nil {
		return "", "", err
	} else if running {
		if admin, err = c.pg.URL(ctx, Database, ""); err != nil {
			return "", "", err
		}
	}
	if c.etcd == nil {
		return admin, admin, nil
	}
	kv, err := c.etcd.URL(ctx)
	if errors.Is(err, containers.ErrNoMemberRuns) {
		return admin, "", nil
	}
	return admin, kv, err
}

func (c *ctrs) agentDB() string { return c.pg.InternalURL(Database, "lenkwerk_agent") }

func (c *ctrs) agentKV() string {
	if c.etcd == nil {
		return c.pg.InternalURL(Database, "")
	}
	return c.etcd.InternalURL()
}

func (c *ctrs) movesPorts() bool { return true }

func (c *ctrs) newProc(name string, args []string) (proc, error) {
	return &ctrProc{c: c, name: name, args: args}, nil
}

func (c *ctrs) run(ctx context.Context, name string, args []string) (string, error) {
	ctr, err := containers.NewLenkwerkOn(ctx, c.tb, c.networks(), c.img, name, nil, args...)
	if err != nil {
		return "", err
	}
	code, err := ctr.ExitCode(ctx)
	out, lerr := ctr.Logs(ctx)
	if err == nil {
		err = lerr
	}
	if err == nil && code != 0 {
		err = fmt.Errorf("exit code %d", code)
	}
	return string(out), err
}

func (c *ctrs) stopStore(ctx context.Context) error {
	if c.etcd == nil {
		return c.pg.Stop(ctx, stopTimeout)
	}
	return c.eachMember(func(i int) error { return c.etcd.Members[i].Stop(ctx, stopTimeout) })
}

func (c *ctrs) killStore(ctx context.Context) error {
	if c.etcd == nil {
		return c.pg.Kill(ctx)
	}
	return c.eachMember(func(i int) error { return c.etcd.Members[i].Kill(ctx) })
}

func (c *ctrs) startStore(ctx context.Context) error {
	if c.etcd == nil {
		return c.startPostgres(ctx)
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

func (c *ctrs) stopPostgres(ctx context.Context) error { return c.pg.Stop(ctx, 20*time.Second) }

func (c *ctrs) killPostgres(ctx context.Context) error { return c.pg.Kill(ctx) }

func (c *ctrs) startPostgres(ctx context.Context) error {
	if err := c.pg.Start(ctx); err != nil {
		return err
	}
	return c.pg.WaitReady(ctx)
}

// partition takes the agent off PostgreSQL's network only: it keeps the
// store's.
func (c *ctrs) partition(ctx context.Context, agent proc) error {
	return c.cut(ctx, agent, []*containers.Network{c.dbNet})
}

// isolate takes the agent off all its networks.
func (c *ctrs) isolate(ctx context.Context, agent proc) error {
	return c.cut(ctx, agent, c.networks())
}

func (c *ctrs) cut(ctx context.Context, agent proc, nws []*containers.Network) error {
	cp := agent.(*ctrProc)
	ctr := cp.get()
	if ctr == nil {
		return errors.New("the agent was never started")
	}
	for _, nw := range nws {
		if slices.Contains(cp.cut, nw) {
			continue
		}
		if err := ctr.DisconnectFrom(ctx, nw); err != nil {
			return err
		}
		cp.cut = append(cp.cut, nw)
	}
	return nil
}

func (c *ctrs) heal(ctx context.Context, agent proc) error {
	cp := agent.(*ctrProc)
	for len(cp.cut) > 0 {
		if err := cp.get().ConnectTo(ctx, cp.cut[0]); err != nil {
			return err
		}
		cp.cut = cp.cut[1:]
	}
	return nil
}

// ctrProc is a lenkwerk container, created at its first start and
// restarted (docker start) after.
type ctrProc struct {
	c    *ctrs
	name string
	args []string
	cut  []*containers.Network // networks it was taken off; under Stack.levers

	// mu guards ctr: the levers (partitions) and Exec use it without
	// Process.mu.
	mu  sync.Mutex
	ctr *containers.Container
}

func (cp *ctrProc) get() *containers.Container {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.ctr
}

func (cp *ctrProc) start(ctx context.Context) error {
	if ctr := cp.get(); ctr != nil {
		return ctr.Start(ctx)
	}
	var opts []testcontainers.ContainerCustomizer
	if cp.c.cfg.readOnly {
		opts = append(opts, containers.ReadOnlyRootfs())
	}
	ctr, err := containers.NewLenkwerkOn(ctx, cp.c.tb, cp.c.networks(), cp.c.img, cp.name, opts, cp.args...)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.ctr = ctr
	cp.mu.Unlock()
	return nil
}

func (cp *ctrProc) kill(ctx context.Context) error {
	if running, err := cp.running(ctx); err != nil || !running {
		return err
	}
	return cp.get().Kill(ctx)
}

func (cp *ctrProc) term(ctx context.Context) (int, error) {
	timeout := agentStopTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	// docker stop: SIGTERM, SIGKILL after timeout.
	ctr := cp.get()
	if err := ctr.Stop(ctx, timeout); err != nil {
		return -1, err
	}
	return ctr.ExitCode(ctx)
}

func (cp *ctrProc) running(ctx context.Context) (bool, error) {
	ctr := cp.get()
	if ctr == nil {
		return false, nil
	}
	return ctr.Running(ctx)
}

func (cp *ctrProc) exitStatus(ctx context.Context) string {
	ctr := cp.get()
	if ctr == nil {
		return "never started"
	}
	r, err := ctr.Inspect(ctx)
	if err != nil {
		return err.Error()
	}
	st := r.State
	status := fmt.Sprintf("exit code %d", st.ExitCode)
	if st.ExitCode > 128 {
		status += fmt.Sprintf(" (signal %d)", st.ExitCode-128)
	}
	if st.OOMKilled {
		status += ", OOM-killed"
	}
	if st.Error != "" {
		status += ", " + st.Error
	}
	return status
}

func (cp *ctrProc) logs(ctx context.Context) ([]byte, error) {
	ctr := cp.get()
	if ctr == nil {
		return nil, nil
	}
	return ctr.Logs(ctx)
}

func (cp *ctrProc) container() *containers.Container { return cp.get() }

func (cp *ctrProc) exec(ctx context.Context, args []string) (int, string, error) {
	running, err := cp.running(ctx)
	if err != nil {
		return -1, "", err
	}
	if !running {
		return -1, "", fmt.Errorf("container %s does not run", cp.name)
	}
	return cp.get().Exec(ctx, append([]string{containers.AgentBinary}, args...)...)
}

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
