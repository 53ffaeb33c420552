package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
	"github.com/bagger/lenkwerk/migrations"
)

const devSynopsis = `dev [--kv etcd|postgres|mem] [--dir DIR] [--port PORT]

Starts a throwaway Lenkwerk to play with: a PostgreSQL server (wal_level=
logical) from the machine's binaries, migrated; a key-value store (an
embedded etcd, pgkv in the same PostgreSQL, or an in-process mem store);
and the agent between them. Prints the connection URLs and the key tree,
then every change of the tree as you change Lenkwerk, e.g.

  psql "$CONFIG_URL" -c "select storage.register_pg_instance('db1', 5432, 'bagger')"

Ctrl-C stops everything and deletes the data (kept with --dir).`

// devDatabase is the database lenkwerk dev creates and migrates.
const devDatabase = "lenkwerk"

func init() {
	register("dev", "run a throwaway PostgreSQL, store and agent, and show the key tree live", func(ctx context.Context, args []string) error {
		return runDev(ctx, args, os.Stdout)
	})
}

func runDev(ctx context.Context, args []string, stdout io.Writer) (err error) {
	// A reader of stdout that went away (`lenkwerk dev | tee log`, Ctrl-C
	// ends tee first) must not kill dev at its next write with SIGPIPE,
	// before it stopped its server: the write fails instead, dev cleans up.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	defer func() {
		// Output that cannot be written once dev is shutting down is no
		// failure: the cleanup is what counts.
		if err != nil && ctx.Err() != nil && isWriteError(err) {
			err = nil
		}
	}()
	fs := newFlagSet("dev", devSynopsis)
	kind := fs.String("kv", "etcd", "key-value store: etcd (embedded), postgres (pgkv in the same PostgreSQL) or mem (in this process)")
	dir := fs.String("dir", "", "keep the data in `DIR` (and reuse it next time) instead of a temporary directory deleted on exit")
	port := fs.Int("port", 0, "PostgreSQL TCP `port` on 127.0.0.1 (default: a free one)")
	logLevel := fs.String("log-level", "warn", "the agent's log level (logs go to stderr): debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *kind != "etcd" && *kind != "postgres" && *kind != "mem" {
		return fmt.Errorf("--kv %q: want etcd, postgres or mem", *kind)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	// Everything started is undone in reverse order, whatever happens.
	var undo []func() error
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
	}()

	root, keep := *dir, *dir != ""
	if keep {
		if root, err = filepath.Abs(root); err != nil {
			return err
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return fmt.Errorf("--dir: %w", err)
		}
	} else {
		if root, err = os.MkdirTemp("", "lenkwerk-dev-"); err != nil {
			return err
		}
		undo = append(undo, func() error {
			if err := os.RemoveAll(root); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "lenkwerk dev: removed %s\n", root)
			return nil
		})
		// As root the server runs as user postgres, which must enter it.
		if err := os.Chmod(root, 0o755); err != nil {
			return err
		}
	}

	// Before the server starts, so that no way of ending dev leaves it
	// running (devwatch.go).
	removeDir := root
	if keep {
		removeDir = ""
	}
	watch, err := startWatchdog(filepath.Join(root, "postgres"), removeDir)
	if err != nil {
		return err
	}
	// Last, after the server stopped: the watchdog then finds nothing to do.
	undo = append([]func() error{watch.Close}, undo...)

	fmt.Fprintf(os.Stderr, "lenkwerk dev: starting PostgreSQL in %s\n", root)
	var access *devAccess
	stackOpts := devstack.StackOptions{
		Postgres: devServerOptions(filepath.Join(root, "postgres"), *port),
		Keep:     keep,
		Database: devDatabase,
		// The server wants passwords over TCP: the superuser's comes
		// first, then the migration, then the roles it created.
		Provision: func(ctx context.Context, pg *devstack.Cluster) (err error) {
			if access, err = setSuperuserPassword(ctx, pg, root); err != nil {
				return err
			}
			if err := migrations.Up(ctx, access.url(devDatabase, "postgres"), migrations.Options{}); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			if err := access.setRoles(ctx); err != nil {
				return err
			}
			access.warnIfTrusting(ctx)
			return nil
		},
	}
	if *kind == "etcd" {
		stackOpts.EtcdMembers, stackOpts.Etcd = 1, devstack.EtcdOptions{Dir: filepath.Join(root, "etcd")}
	}
	stack, err := devstack.StartStack(ctx, stackOpts)
	if err != nil {
		return err
	}
	undo = append(undo, stack.Close)
	pg := stack.Postgres

	// URLs with the run's passwords are for this process; the printed ones
	// have none (psql and lenkwerk read them from access.passFile).
	var kvURL, kvShown, kvNote string
	switch *kind {
	case "etcd":
		kvURL = stack.EtcdURL()
	case "postgres":
		kvURL, kvShown, kvNote = access.url(devDatabase, "postgres"), stack.DatabaseURL(""), " (pgkv, schema "+pgkv.DefaultSchema+")"
	case "mem":
		kvURL, kvNote = "mem://lenkwerk-dev", " (in this process only: the tree below is the way to see it)"
	}
	if kvShown == "" {
		kvShown = kvURL
	}
	store, err := kvdriver.Open(ctx, kvURL)
	if err != nil {
		return err
	}
	undo = append(undo, store.Close)

	a, err := agent.New(agent.Config{DatabaseURL: access.url(devDatabase, "lenkwerk_agent"), Store: store, Logger: log})
	if err != nil {
		return err
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	var agentErr error
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		if agentErr = a.Run(agentCtx); agentErr == nil && agentCtx.Err() == nil {
			agentErr = errors.New("agent stopped")
		}
	}()
	undo = append(undo, func() error {
		stopAgent()
		<-agentDone // the agent lets go of the slot before PostgreSQL stops
		return agentErr
	})
	if err := waitStreaming(ctx, a, agentDone); err != nil || ctx.Err() != nil {
		return err
	}
	select {
	case <-agentDone:
		return nil // undo returns the agent's error
	default:
	}
	// The tree is shown while the agent runs; if it ends, so does dev
	// (with the agent's error, from undo).
	showCtx, stopShow := context.WithCancel(ctx)
	defer stopShow()
	go func() {
		select {
		case <-agentDone:
			stopShow()
		case <-showCtx.Done():
		}
	}()

	psql := "psql"
	if _, err := exec.LookPath("psql"); err != nil {
		psql = filepath.Join(pg.BinDir(), "psql")
	}
	info := devInfo{
		adminURL:  pg.URL(devDatabase, ""),
		configURL: withOptions(pg.URL(devDatabase, devConfigLogin), "-c role=lenkwerk_config"),
		agentURL:  pg.URL(devDatabase, "lenkwerk_agent"),
		kvURL:     kvShown,
		kvNote:    kvNote,
		passFile:  access.passFile,
		dir:       root,
		keep:      keep,
		psql:      psql,
	}
	if err := info.print(stdout); err != nil {
		return err
	}
	stop := "Ctrl-C stops everything and deletes the data"
	if keep {
		stop = "Ctrl-C stops everything; the data stays in " + root
	}
	return showTree(showCtx, store, stdout, stop)
}

// isWriteError reports whether err is a failed write to a closed pipe or
// terminal (EPIPE, EIO).
func isWriteError(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.EIO) || errors.Is(err, os.ErrClosed)
}

// devInfo is what lenkwerk dev tells its user.
type devInfo struct {
	adminURL, configURL, agentURL string
	kvURL, kvNote                 string // kvNote: "" or " (…)"
	passFile                      string // the run's passwords
	dir                           string
	keep                          bool   // dir stays after exit
	psql                          string // the psql command
}

// print writes the URLs and commands to try.
func (d devInfo) print(stdout io.Writer) error {
	removed := "deleted on exit"
	if d.keep {
		removed = "kept"
	}
	w := bufio.NewWriter(stdout)
	fmt.Fprintf(w, `Lenkwerk dev is running.

  admin:           %s
  lenkwerk_config: %s
  lenkwerk_agent:  %s
  kv:              %s%s
  data:            %s (%s)
  passwords:       %s (new each run)

lenkwerk_config cannot log in (NOLOGIN); its URL logs in as
%s, a member of it and nothing else, and takes the role
with options=-c role=lenkwerk_config: libpq passes "-c role=…" as a
startup setting, so the session runs as lenkwerk_config from its first
statement, as if it had run SET ROLE lenkwerk_config (current_user is
lenkwerk_config, session_user the login). Give your application's login
the same: GRANT lenkwerk_config TO app_login, and
options=-c%%20role%%3Dlenkwerk_config in its URL (or PGOPTIONS). The server
wants the passwords over TCP and keeps its socket to its own OS user. In
another terminal:

  export PGPASSFILE=%s
`, d.adminURL, d.configURL, d.agentURL, d.kvURL, d.kvNote, d.dir, removed, d.passFile, devConfigLogin, d.passFile)
	for _, sql := range []string{
		"select storage.register_pg_instance('db1', 5432, 'bagger')",
		"select storage.set_pg_instance_status(1, 3)",
		`select storage.save_config('kvstore_type', '\"etcd\"')`,
	} {
		fmt.Fprintf(w, "  %s '%s' -c \"%s\"\n", d.psql, d.configURL, sql)
	}
	if !strings.HasPrefix(d.kvURL, "mem:") {
		fmt.Fprintf(w, "  lenkwerk status --database-url '%s' --kv '%s'\n  lenkwerk kv --kv '%s' ls /\n", d.agentURL, d.kvURL, d.kvURL)
	}
	return w.Flush()
}

// showTree prints the key tree, then every change until ctx ends. The
// agent's own keys (checkpoint) are left out.
func showTree(ctx context.Context, store *kvdriver.Store, stdout io.Writer, stop string) error {
	hidden := "/" + agent.ReservedSegment + "/"
	kvs, rev, err := store.List(ctx, "/")
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("list the tree: %w", err)
	}
	w := bufio.NewWriter(stdout)
	fmt.Fprintf(w, "\nKey tree at revision %d (without %s…):\n", rev, hidden)
	for _, kv := range kvs {
		if !strings.HasPrefix(kv.Key, hidden) {
			fmt.Fprintf(w, "%s\t%s\n", oneKey(kv.Key), oneLine(kv.Value))
		}
	}
	fmt.Fprintf(w, "\nWatching / for changes: REVISION put|delete KEY [VALUE] (%s)\n", stop)
	if err := w.Flush(); err != nil {
		return err
	}
	for resp := range store.Watch(ctx, "/", rev) {
		for _, ev := range resp.Events {
			if strings.HasPrefix(ev.Key, hidden) {
				continue
			}
			if ev.Type == kvdriver.OpPut {
				fmt.Fprintf(w, "%d\tput\t%s\t%s\n", ev.Revision, oneKey(ev.Key), oneLine(ev.Value))
			} else {
				fmt.Fprintf(w, "%d\t%s\t%s\n", ev.Revision, ev.Type, oneKey(ev.Key))
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if resp.Err != nil && ctx.Err() == nil {
			return fmt.Errorf("watch: %w", resp.Err)
		}
	}
	return nil
}

// waitStreaming waits until the agent streams (its initial sync is done);
// done is closed when the agent stops.
func waitStreaming(ctx context.Context, a *agent.Agent, done <-chan struct{}) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(time.Minute)
	for !a.Status().Streaming {
		select {
		case <-done:
			return nil // undo reports the agent's error
		case <-ctx.Done():
			return nil
		case <-timeout:
			return fmt.Errorf("agent not streaming after a minute: %v", a.Status().Err)
		case <-tick.C:
		}
	}
	return nil
}

// withOptions adds the libpq "options" parameter (server settings at
// connection start) to a URL.
func withOptions(raw, options string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	q.Set("options", options)
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}
