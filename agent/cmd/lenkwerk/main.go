// Command lenkwerk provisions the Lenkwerk database, runs the agent that
// mirrors it into a key-value store, and inspects that store.
//
// Each subcommand lives in its own file and registers itself from init.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// command is one lenkwerk subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string) error) {
	if _, dup := commands[name]; dup {
		panic("lenkwerk: command registered twice: " + name)
	}
	commands[name] = command{name: name, summary: summary, run: run}
}

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

func usage() {
	fmt.Fprintf(os.Stderr, "Usage: lenkwerk <command> [flags] [args]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'lenkwerk help <command>' (or 'lenkwerk <command> -h') for a command's flags and environment.\n")
}

func main() {
	if dir := os.Getenv(watchdogEnv); dir != "" {
		os.Exit(runWatchdog(dir))
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if len(os.Args) == 3 && os.Args[1] == "help" {
		// lenkwerk help CMD: the command's own help (flags, environment).
		if cmd, ok := commands[os.Args[2]]; ok {
			if err := cmd.run(context.Background(), []string{"-h"}); err != nil && !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(os.Stderr, "lenkwerk %s: %v\n", cmd.name, err)
				os.Exit(1)
			}
			return
		}
		fmt.Fprintf(os.Stderr, "lenkwerk: unknown command %q\n\n", os.Args[2])
		usage()
		os.Exit(2)
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "lenkwerk: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if names := secretFlags(os.Args[2:]); len(names) > 0 {
		// Refused, not just warned about: by the time anyone reads a warning
		// the password has been in every local user's process listing.
		fmt.Fprintf(os.Stderr, "lenkwerk %s: --%s carries a password, and a command line is visible to every local user (ps, /proc): "+
			"give the URL in the environment (LENKWERK_DATABASE_URL, LENKWERK_KV_URL), the PostgreSQL password in PGPASSFILE or PGPASSWORD, the etcd password with password-file= or LENKWERK_ETCD_PASSWORD\n",
			cmd.name, strings.Join(names, ", --"))
		os.Exit(2)
	}
	ctx, stop := signalContext()
	defer stop()
	if err := cmd.run(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if !errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "lenkwerk %s: %v\n", cmd.name, err)
		}
		os.Exit(1)
	}
}

// signalContext is cancelled by the first SIGINT or SIGTERM, so the command
// shuts down cleanly; a second signal exits at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-ch:
			slog.Info("shutting down (signal again to exit at once)", "signal", sig.String())
			cancel()
		case <-ctx.Done():
			return
		}
		<-ch
		fmt.Fprintln(os.Stderr, "lenkwerk: second signal, exiting now")
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// envOr returns the environment variable's value, or def when it is unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// newFlagSet returns a flag set for a subcommand that reports errors instead
// of exiting.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("lenkwerk "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: lenkwerk %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nEnvironment:\n")
		env := commandEnv(name, fs)
		for _, e := range env {
			fmt.Fprintf(fs.Output(), "  %-28s %s\n", e.name, e.what)
		}
		if len(env) == 0 {
			fmt.Fprintf(fs.Output(), "  none read\n")
		}
	}
	return fs
}

// envVar is an environment variable a command reads, for its help.
type envVar struct{ name, what string }

// flagEnv finds "(env NAME" in a flag's usage text.
var flagEnv = regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)`)

// commandEnv lists the environment variables command name reads: the
// defaults of its flags (named in their usage, "(env NAME)", so that the
// list cannot drift from the flags), the passwords of the URLs it takes
// and what else it reads.
func commandEnv(name string, fs *flag.FlagSet) []envVar {
	var env []envVar
	seen := map[string]bool{}
	add := func(n, what string) {
		if !seen[n] {
			seen[n] = true
			env = append(env, envVar{n, what})
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		for _, m := range flagEnv.FindAllStringSubmatch(f.Usage, -1) {
			add(m[1], "default of --"+f.Name)
		}
	})
	if fs.Lookup("database-url") != nil {
		add("PGPASSFILE", "password file for PostgreSQL URLs without a password (libpq's format)")
		add("PGPASSWORD", "password for PostgreSQL URLs without one (PGPASSFILE is safer)")
	}
	if f := fs.Lookup("kv"); f != nil && strings.Contains(f.Usage, "URL") {
		add(etcd.PasswordEnv, "password for an etcd:// store URL with a user and no password-file=")
	}
	if name == "agent" {
		add("GOGC", fmt.Sprintf("Go collector target, percent (default for the agent: %d)", agentGCPercent))
		add("GOMEMLIMIT", fmt.Sprintf("Go soft memory limit (default for the agent: %dMiB)", agentMemoryLimit>>20))
	}
	return env
}
