package harness

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/integration/containers"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd" // etcd:// store URLs
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv" // postgres:// store URLs
	"github.com/bagger/lenkwerk/migrations"
)

// Database is the name of the Lenkwerk database every Stack creates.
const Database = "lenkwerk"

// ErrUnsupported is returned by a fault lever the Stack's backend or store
// cannot pull (e.g. PartitionAgentFromDB or KillPostgres on the local
// backend, StopNode with PGKV). It wraps errors.ErrUnsupported.
var ErrUnsupported = fmt.Errorf("harness: %w", errors.ErrUnsupported)

// logTail is how much of the end of a lenkwerk process's output a failed
// test shows.
const logTail = 64 << 10

// startTimeout bounds Start: servers, migrations and the agent's initial
// sync. Building the images comes before it and is not counted.
const startTimeout = 3 * time.Minute

// backend is what a Backend runs. Its methods other than newProc's
// processes are called one at a time, under Stack.levers.
type backend interface {
	// urls returns the host's admin URL of the Lenkwerk database and the
	// store URL, read afresh (container host ports change on restart);
	// "" for a server that does not run.
	urls(ctx context.Context) (admin, kv string, err error)
	// agentDB and agentKV are the URLs lenkwerk processes of the backend
	// use: the Lenkwerk database as lenkwerk_agent, and the store.
	agentDB() string
	agentKV() string
	// newProc creates, without starting it, a lenkwerk process named name
	// running args.
	newProc(name string, args []string) (proc, error)
	// run runs a lenkwerk command to its end.
	run(ctx context.Context, name string, args []string) (string, error)
	stopStore(ctx context.Context) error
	killStore(ctx context.Context) error
	startStore(ctx context.Context) error
	stopNode(ctx context.Context, i int) error
	startNode(ctx context.Context, i int) error
	stopPostgres(ctx context.Context) error
	killPostgres(ctx context.Context) error
	startPostgres(ctx context.Context) error
	partition(ctx context.Context, agent proc) error
	isolate(ctx context.Context, agent proc) error
	heal(ctx context.Context, agent proc) error
	// movesPorts reports whether restarted servers get new host ports,
	// so the Stack's store must be opened again.
	movesPorts() bool
}

// Stack is a running Lenkwerk: PostgreSQL with the Lenkwerk database
// migrated, a key-value store and the agent mirroring one into the other.
// Start returns it; the test's Cleanup tears it down. Its methods are safe
// for concurrent use.
type Stack struct {
	tb      testing.TB
	cfg     config
	backend Backend

	// levers serializes the backend's methods (fault levers); mu guards
	// the fields below, so URLs, the store and the processes are at hand
	// while a lever takes its time.
	levers sync.Mutex
	b      backend

	mu    sync.Mutex
	admin string          // current admin URL
	kvURL string          // current store URL
	store *kvdriver.Store // opened on kvURL
	agent *Process
	procs []*Process // every process, the agent first
}

// Start brings up a Stack for tb and registers its teardown with
// tb.Cleanup. It fails tb (Fatal) when something does not come up; it
// returns once the agent has copied the (fresh) database into the store and
// streams changes — or, with WithAgentStopped, once PostgreSQL and the
// store serve, before the agent's first start.
//
// Without WithBackend or LENKWERK_HARNESS_BACKEND it uses the containers
// backend when a Docker engine answers, else the local one.
func Start(tb testing.TB, opts ...Option) *Stack {
	tb.Helper()
	cfg, err := newConfig(opts)
	if err != nil {
		tb.Fatal(err)
	}
	if cfg.backend == "" {
		cfg.backend = Local
		if dockerAnswers(context.Background()) {
			cfg.backend = Containers
		}
	}
	if err := cfg.validate(); err != nil {
		tb.Fatal(err)
	}
	var img containers.Images
	if cfg.backend == Containers {
		// Before the clock starts: building cold images takes minutes on a
		// busy machine (and parallel tests wait for the one build), and
		// startTimeout is for bringing up the stack, not for the build.
		img = containers.EnsureImages(tb)
	}
	var bin string
	if cfg.backend == Local {
		// Before the clock starts too, for the same reason: a cold build of
		// the lenkwerk command alone has taken minutes under load.
		began := time.Now()
		if bin, err = lenkwerkBinary(context.Background()); err != nil {
			tb.Fatalf("harness: %v", err)
		}
		tb.Logf("harness: lenkwerk binary %s (%v)", bin, time.Since(began).Round(10*time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	began := time.Now()
	s := &Stack{tb: tb, cfg: cfg, backend: cfg.backend}
	switch cfg.backend {
	case Local:
		s.b, err = startLocal(ctx, tb, cfg, bin)
	case Containers:
		if cfg.patroni {
			s.b, err = startPatroni(ctx, tb, cfg, img)
		} else {
			s.b, err = startContainers(ctx, tb, cfg, img)
		}
	}
	if err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	// Registered after the backend's own: runs first, before the servers
	// go away.
	tb.Cleanup(func() {
		s.mu.Lock()
		procs := s.procs
		s.mu.Unlock()
		if s.backend == Containers {
			// Each container's own Cleanup shows its output when the
			// test failed, and removes it.
			procs = nil
		}
		if tb.Failed() {
			for _, p := range procs {
				tb.Logf("--- end of the output of %s (%s backend):\n%s", p.name, s.backend, p.tail(logTail))
			}
		}
		// Agents let go of the slot before PostgreSQL stops.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, p := range procs {
			if err := p.stopIfRunning(ctx); err != nil {
				tb.Errorf("harness: stop %s: %v", p.name, err)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.store != nil {
			s.store.Close()
		}
	})
	if err := s.refresh(ctx); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if err := createConfigLogin(ctx, s.DatabaseURL()); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if s.agent, err = s.newProcess("agent", s.agentCommand("agent")); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if !cfg.agentStopped {
		if err := s.agent.Start(ctx); err != nil {
			tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
		}
		if err := s.waitAgentReady(ctx); err != nil {
			tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
		}
	}
	tb.Logf("harness: %s backend, store %s: up in %v", cfg.backend, cfg.kv, time.Since(began).Round(10*time.Millisecond))
	return s
}

// agentCommand is the command line of an agent named name.
func (s *Stack) agentCommand(name string) []string {
	return append([]string{"agent"}, s.agentFlags(name)...)
}

// agentFlags are an agent's flags; its connections carry its name as
// application_name, so the server tells agents apart.
func (s *Stack) agentFlags(name string) []string {
	args := []string{
		"--database-url", withParam(s.b.agentDB(), "application_name", name),
		"--kv", s.b.agentKV(),
		"--log-level", s.cfg.logLevel,
	}
	if s.cfg.prefix != "" {
		args = append(args, "--prefix", s.cfg.prefix)
	}
	return append(args, s.cfg.agentArgs...)
}

// newProcess creates a process of the Stack, not started.
func (s *Stack) newProcess(name string, args []string) (*Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.name == name {
			return nil, fmt.Errorf("harness: the stack has a process named %s already", name)
		}
	}
	p, err := s.b.newProc(name, args)
	if err != nil {
		return nil, err
	}
	proc := &Process{name: name, p: p}
	s.procs = append(s.procs, proc)
	return proc, nil
}

// Agent is the Stack's agent, the one Start starts (unless
// WithAgentStopped) and the agent levers act on. Use it to stop the agent
// cleanly and check its exit code, read its log, or see whether it exited
// on its own.
func (s *Stack) Agent() *Process { return s.agent }

// AddAgent creates another agent on the same database, slot and store, as
// a standby of a high-availability deployment, named name (its container's
// network alias, and its connections' application_name). It is not started: call
// Start.
func (s *Stack) AddAgent(name string) (*Process, error) {
	return s.newProcess(name, s.agentCommand(name))
}

// Command creates a long-running lenkwerk process named name next to the
// agent, e.g. a watcher of the store:
//
//	w, err := s.Command("watcher", "kv", "--kv", s.AgentKVURL(), "watch", "/")
//
// It is not started: call Start; Log returns its output. The URLs in args
// must be those processes of the Stack use (AgentKVURL, AgentDatabaseURL).
func (s *Stack) Command(name string, args ...string) (*Process, error) {
	return s.newProcess(name, args)
}

// Lenkwerk runs the lenkwerk command args to its end next to the agent (a
// child process, or a container on the Stack's networks) and returns its
// output; a non-zero exit is an error. AgentFlags gives what an agent
// command needs:
//
//	out, err := s.Lenkwerk(ctx, append([]string{"resync"}, s.AgentFlags()...)...)
func (s *Stack) Lenkwerk(ctx context.Context, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("harness: Lenkwerk: no command")
	}
	s.levers.Lock()
	defer s.levers.Unlock()
	out, err := s.b.run(ctx, "lenkwerk-"+args[0], args)
	if err != nil {
		return out, fmt.Errorf("harness: lenkwerk %s: %w", redactArgs(args), err)
	}
	return out, nil
}

// AgentFlags are the flags the Stack's agent runs with (without the
// "agent" command): --database-url, --kv, --log-level, --prefix and what
// WithAgentArgs and WithKeyTemplate add. Commands such as `lenkwerk
// resync` take the same.
func (s *Stack) AgentFlags() []string { return s.agentFlags("lenkwerk") }

// AgentDatabaseURL is the Lenkwerk database's URL as lenkwerk processes of
// the Stack reach it, as the lenkwerk_agent role (on the containers
// backend, a name on the Stack's network, not reachable from the test).
func (s *Stack) AgentDatabaseURL() string { return s.b.agentDB() }

// AgentKVURL is the store's URL as lenkwerk processes of the Stack reach
// it (on the containers backend, names on the Stack's network).
func (s *Stack) AgentKVURL() string { return s.b.agentKV() }

// KeyTemplates are the agent's key templates set by WithKeyTemplate (nil
// without), as integration/converge takes them.
func (s *Stack) KeyTemplates() map[string]string { return s.cfg.templates }

// createDatabase creates the Lenkwerk database on the server of serverURL
// (a superuser URL of any database) unless it exists.
func createDatabase(ctx context.Context, serverURL string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", Database).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", Database, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{Database}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", Database, err)
		}
	}
	return nil
}

// migrate migrates the Lenkwerk database at adminURL in the test process.
func migrate(ctx context.Context, adminURL string) error {
	if err := migrations.Up(ctx, adminURL, migrations.Options{}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Backend reports the backend the Stack runs on.
func (s *Stack) Backend() Backend { return s.backend }

// KVKind reports the kind of store the Stack runs.
func (s *Stack) KVKind() KV { return s.cfg.kv }

// Prefix is the agent's key prefix ("" unless WithPrefix), without the
// trailing '/' WithPrefix may have been given (the agent drops it too), so
// that Prefix()+"/Config/x" is a key.
func (s *Stack) Prefix() string {
	if p, err := keymap.CleanPrefix(s.cfg.prefix); err == nil {
		return p
	}
	return s.cfg.prefix
}

// DatabaseURL is the Lenkwerk database's URL as a superuser, as the host
// (the test) reaches it. On the containers backend it changes when
// PostgreSQL is restarted (StopStore/StartStore with PGKV).
func (s *Stack) DatabaseURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admin
}

// ConfigURL is a URL acting as the lenkwerk_config role, the one Bagger's
// configuration tools use. That role cannot log in (NOLOGIN), so the URL
// logs in as lenkwerk_config_login, a login role the harness creates with
// nothing but membership in lenkwerk_config (as a deployment grants the
// role to its operators' login roles), and takes the role at connection
// start (options=-c role=lenkwerk_config). Everything done through it has
// exactly lenkwerk_config's privileges, even after RESET ROLE or SET ROLE:
// the session's own role is no superuser.
func (s *Stack) ConfigURL() string {
	return withOptions(withUser(s.DatabaseURL(), configLogin), "-c role=lenkwerk_config")
}

// configLogin is the login role of ConfigURL.
const configLogin = "lenkwerk_config_login"

// createConfigLogin creates configLogin, a member of lenkwerk_config and
// nothing else, on the server of adminURL (a superuser URL) unless it
// exists. Roles are cluster-wide: on a shared server another Stack may
// have created it, concurrently too. No password: both backends trust
// every role, as for lenkwerk_agent.
func createConfigLogin(ctx context.Context, adminURL string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `DO $$
BEGIN
    CREATE ROLE `+configLogin+` LOGIN IN ROLE lenkwerk_config;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$`)
	if err != nil {
		return fmt.Errorf("create role %s: %w", configLogin, err)
	}
	return nil
}

// KVURL is the store's URL as the host reaches it (etcd://…, or
// postgres://… for PGKV), naming every etcd member of a cluster. On the
// containers backend it changes when the store is restarted.
func (s *Stack) KVURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kvURL
}

// Store is an open store on KVURL, closed by the Stack: do not close it.
// On the containers backend a store restart (StartStore, StartNode) moves
// the host ports, so the Stack closes this store and opens another: call
// Store again after those levers rather than keeping the old one.
func (s *Stack) Store() *kvdriver.Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

// refresh rereads the URLs and, when the store URL changed, reopens the
// store.
func (s *Stack) refresh(ctx context.Context) error {
	s.levers.Lock()
	defer s.levers.Unlock()
	return s.refreshLocked(ctx)
}

// refreshLocked is refresh with s.levers held. A server that does not run
// (etcd stopped while PostgreSQL restarts) keeps its last URL: it gets a
// new one when it starts.
func (s *Stack) refreshLocked(ctx context.Context) error {
	admin, kvURL, err := s.b.urls(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if admin != "" {
		s.admin = admin
	}
	same := kvURL == "" || s.store != nil && kvURL == s.kvURL
	s.mu.Unlock()
	if same {
		return nil
	}
	store, err := kvdriver.Open(ctx, kvURL)
	if err != nil {
		return fmt.Errorf("open store %s: %w", kvdriver.Redact(kvURL), err)
	}
	s.mu.Lock()
	old := s.store
	s.store, s.kvURL = store, kvURL
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// waitAgentReady waits for the agent's first checkpoint: written at the end
// of its initial sync, it says the store holds the database and the agent
// streams.
func (s *Stack) waitAgentReady(ctx context.Context) error {
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		_, ok, err := agent.ReadCheckpoint(ctx, s.Store(), s.cfg.prefix, agent.DefaultSlot)
		if ok || err != nil {
			return ok, err
		}
		running, err := s.agent.Running(ctx)
		if err == nil && !running {
			return false, errors.New("the agent exited")
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the agent's initial sync: %w\n%s", err, s.agent.tail(logTail))
	}
	return nil
}

// AgentRunning reports whether the agent process (or container) runs: it
// is false after KillAgent, and when the agent exited by itself — which
// it should not do for any fault it is meant to ride out.
func (s *Stack) AgentRunning(ctx context.Context) (bool, error) {
	return s.agent.Running(ctx)
}

// withParam sets the query parameter name of a URL.
func withParam(raw, name, value string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	q.Set(name, value)
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// withUser sets the user of a URL (keeping no password).
func withUser(raw, user string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.User = url.User(user)
	return u.String()
}

// withOptions sets the libpq "options" parameter (server settings at
// connection start) of a URL.
func withOptions(raw, options string) string { return withParam(raw, "options", options) }

// poll calls cond until it returns true or an error, or ctx ends.
func poll(ctx context.Context, every time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
