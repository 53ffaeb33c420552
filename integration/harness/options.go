package harness

import (
	"fmt"
	"os"
)

// Backend is how a Stack runs its servers.
type Backend string

const (
	// Local runs the machine's PostgreSQL binaries and etcd embedded in
	// the test process (agent/devstack's Stack, as lenkwerk dev) and the
	// agent as a child process.
	Local Backend = "local"
	// Containers runs PostgreSQL, etcd and the agent as Docker containers
	// (integration/containers): PostgreSQL on a network of the Stack's
	// own, etcd on another, lenkwerk containers on both, so a partition
	// can cut one way and not the other.
	Containers Backend = "containers"
)

// BackendEnv names the environment variable that picks the backend when no
// WithBackend option does: "local" or "containers".
const BackendEnv = "LENKWERK_HARNESS_BACKEND"

// BinEnv names the environment variable with the path of a lenkwerk binary
// the local backend runs instead of building one.
const BinEnv = "LENKWERK_BIN"

// KV is the kind of key-value store a Stack runs.
type KV string

const (
	// Etcd is a single etcd member.
	Etcd KV = "etcd"
	// EtcdCluster is a three-member etcd cluster.
	EtcdCluster KV = "etcd-cluster"
	// PGKV is the pgkv driver in Lenkwerk's own PostgreSQL database
	// (schema lenkwerk_kv): a Postgres-only deployment. The store always
	// lives in the Lenkwerk database; a separate store database is not
	// offered (see the package documentation).
	PGKV KV = "pgkv"
)

// Option configures Start.
type Option func(*config)

type config struct {
	backend      Backend
	kv           KV
	prefix       string
	logLevel     string
	agentStopped bool
	agentArgs    []string
	templates    map[string]string
	migrateCmd   bool
	readOnly     bool
	patroni      bool
}

// WithBackend picks the backend, overriding LENKWERK_HARNESS_BACKEND.
func WithBackend(b Backend) Option { return func(c *config) { c.backend = b } }

// WithKV picks the store: Etcd (the default), EtcdCluster or PGKV.
func WithKV(kv KV) Option { return func(c *config) { c.kv = kv } }

// WithPrefix runs the agent with --prefix p ("/bagger"): every key it
// writes, and every key WaitForKey and WaitCaughtUp look at, is below p.
// Keys given to WaitForKey are full keys, prefix included.
func WithPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithAgentLogLevel sets the agent's --log-level (default "info"). Its log
// is shown when the test fails.
func WithAgentLogLevel(level string) Option { return func(c *config) { c.logLevel = level } }

// WithAgentStopped has Start return with the agent created but not
// started, once PostgreSQL is migrated and the store serves: the test can
// prepare the database (or break something) before the agent's first
// start, then call Stack.Agent().Start. Start does not wait for the
// initial sync then; WaitCaughtUp does.
func WithAgentStopped() Option { return func(c *config) { c.agentStopped = true } }

// WithAgentArgs adds flags to the agent's command line (after
// --database-url, --kv, --log-level and --prefix), for every agent of the
// Stack, e.g. WithAgentArgs("--metrics-addr", ":9090"). For
// --key-template use WithKeyTemplate, which WaitCaughtUp knows of.
func WithAgentArgs(args ...string) Option {
	return func(c *config) { c.agentArgs = append(c.agentArgs, args...) }
}

// WithKeyTemplate runs the agent with --key-template table=template
// (table "storage.config", template "/Cfg/{key}"): the table's rows go to
// keys of that form. Stack.KeyTemplates returns them, for
// integration/converge.
func WithKeyTemplate(table, template string) Option {
	return func(c *config) {
		if c.templates == nil {
			c.templates = map[string]string{}
		}
		c.templates[table] = template
		c.agentArgs = append(c.agentArgs, "--key-template", table+"="+template)
	}
}

// WithMigrateCommand migrates the Lenkwerk database the way a deployment
// does, with `lenkwerk migrate up` (a migrate job container on the
// containers backend), rather than in the test process. It tests the
// command and takes a little longer.
func WithMigrateCommand() Option { return func(c *config) { c.migrateCmd = true } }

// WithReadOnlyAgent runs the agents' containers with a read-only root
// filesystem (docker run --read-only), as a hardened deployment does.
// Containers backend only: Start fails on the local backend.
func WithReadOnlyAgent() Option { return func(c *config) { c.readOnly = true } }

func newConfig(opts []Option) (config, error) {
	c := config{kv: Etcd, logLevel: "info"}
	for _, o := range opts {
		o(&c)
	}
	if c.backend == "" {
		c.backend = Backend(os.Getenv(BackendEnv))
	}
	switch c.backend {
	case "", Local, Containers:
	default:
		return c, fmt.Errorf("harness: backend %q: want %q or %q", c.backend, Local, Containers)
	}
	switch c.kv {
	case Etcd, EtcdCluster, PGKV:
	default:
		return c, fmt.Errorf("harness: store %q: want %q, %q or %q", c.kv, Etcd, EtcdCluster, PGKV)
	}
	return c, nil
}

// validate checks what depends on the backend, once it is chosen.
func (c config) validate() error {
	if c.readOnly && c.backend != Containers {
		return fmt.Errorf("harness: WithReadOnlyAgent needs the containers backend, not %q", c.backend)
	}
	if c.patroni && c.backend != Containers {
		return fmt.Errorf("%w: WithPatroni needs the containers backend, not %q", ErrUnsupported, c.backend)
	}
	return nil
}
