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
	"sort"
	"strings"
	"syscall"
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
	fmt.Fprintf(os.Stderr, "\nRun 'lenkwerk <command> -h' for a command's flags.\n")
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
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
	}
	return fs
}
