package harness

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
)

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

// AgentRunning reports whether the agent process (or container) runs: it
// is false after KillAgent, and when the agent exited by itself — which
// it should not do for any fault it is meant to ride out.
func (s *Stack) AgentRunning(ctx context.Context) (bool, error) {
	return s.agent.Running(ctx)
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
