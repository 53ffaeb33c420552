package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/migrations"
)

const migrateSynopsis = `migrate [flags] up | down [N] | goto V | version | force V | adopt

  up         apply every migration not yet applied (needs wal_level=logical)
  down [N]   revert the last N migrations; without N all of them, which drops
             schema storage with all its data, the publication and the slot
             (asks first unless -y; the cluster-wide roles stay)
  goto V     migrate up or down to version V (0: none)
  version    print the version the database is at
  force V    record version V as applied, without running anything: the way
             out of a dirty version once the failed migration's cause is fixed
  adopt      take over a database where Bagger's own extension bagger_lw_storage
             0.0.1 is installed, keeping every row: its objects are checked, it
             is replaced by Lenkwerk's schema in one transaction, Bagger's
             agent's idle test_decoding slot lw_agent by the pgoutput slot, then
             up runs; with --copy on a storage node, for lenkwerk follow`

func init() {
	register("migrate", "provision the Lenkwerk database (schema, roles, publication, slot)", func(ctx context.Context, args []string) error {
		return runMigrate(ctx, args, os.Stdin, os.Stdout, os.Stderr)
	})
}

// runMigrate is the migrate command with its standard streams passed in.
func runMigrate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", migrateSynopsis)
	fs.SetOutput(stderr)
	dbURL := fs.String("database-url", envOr("LENKWERK_DATABASE_URL", ""), "PostgreSQL URL of the Lenkwerk database, as a superuser (env LENKWERK_DATABASE_URL)")
	slot := fs.String("slot", "", "replication slot name (default "+migrations.DefaultSlot+", or the name the database recorded)")
	publication := fs.String("publication", "", "publication name (default "+migrations.DefaultPublication+", or the name the database recorded)")
	yes := fs.Bool("y", false, "do not ask before down without N")
	copyMode := fs.Bool("copy", false, "provision a storage node's local copy for lenkwerk follow: no wal_level requirement, publication or slot")

	// Flags may come before or after the action and its argument.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "lenkwerk migrate: "+format+"\n\n", a...)
		fs.Usage()
		return errUsage
	}
	if len(pos) == 0 {
		return usageErr("no action given")
	}
	if *dbURL == "" {
		return usageErr("no database: set --database-url or LENKWERK_DATABASE_URL")
	}
	opts := migrations.Options{
		Slot:        *slot,
		Publication: *publication,
		Copy:        *copyMode,
		Log:         func(msg string) { fmt.Fprintf(stdout, "applied %s\n", msg) },
		Note:        func(msg string) { fmt.Fprintln(stdout, msg) },
	}
	action, rest := pos[0], pos[1:]
	// withVersion runs do with the action's one argument, a version.
	withVersion := func(do func(v uint) error) error {
		if len(rest) != 1 {
			return usageErr("%s takes one argument, the version", action)
		}
		v, err := strconv.ParseUint(rest[0], 10, 0)
		if err != nil {
			return usageErr("%s: invalid version %q", action, rest[0])
		}
		return do(uint(v))
	}
	switch action {
	case "up":
		if len(rest) != 0 {
			return usageErr("up takes no arguments")
		}
		if err := migrations.Up(ctx, *dbURL, opts); err != nil {
			return err
		}
	case "down":
		n := 0
		switch len(rest) {
		case 0:
			if !*yes {
				ok, err := confirm(stdin, stderr, *dbURL)
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("down aborted: nothing was changed")
				}
			}
		case 1:
			v, err := strconv.Atoi(rest[0])
			if err != nil || v < 1 {
				return usageErr("down: N must be a positive number, not %q", rest[0])
			}
			n = v
		default:
			return usageErr("down takes at most one argument, N")
		}
		if err := migrations.Down(ctx, *dbURL, n, opts); err != nil {
			return err
		}
	case "goto":
		if err := withVersion(func(v uint) error { return migrations.Goto(ctx, *dbURL, v, opts) }); err != nil {
			return err
		}
	case "force":
		if err := withVersion(func(v uint) error { return migrations.Force(ctx, *dbURL, v) }); err != nil {
			return err
		}
	case "version":
		if len(rest) != 0 {
			return usageErr("version takes no arguments")
		}
	case "adopt":
		if len(rest) != 0 {
			return usageErr("adopt takes no arguments")
		}
		if err := migrations.Adopt(ctx, *dbURL, opts); err != nil {
			return err
		}
	default:
		return usageErr("unknown action %q", action)
	}
	v, dirty, err := migrations.Version(ctx, *dbURL)
	if err != nil {
		return err
	}
	latest := migrations.Versions()[len(migrations.Versions())-1]
	switch {
	case dirty:
		fmt.Fprintf(stdout, "version %d (dirty: %s)\n", v, migrations.DirtyAdvice(v))
	case v == latest:
		fmt.Fprintf(stdout, "version %d (latest)\n", v)
	default:
		fmt.Fprintf(stdout, "version %d (latest is %d)\n", v, latest)
	}
	return nil
}

// confirm asks on stdin before every migration is reverted.
func confirm(stdin io.Reader, stderr io.Writer, dbURL string) (bool, error) {
	fmt.Fprintf(stderr, "This reverts every Lenkwerk migration of %s:\n"+
		"it drops schema storage with ALL the Bagger cluster state in it, the publication and the replication slot.\n"+
		"Type yes to continue: ", kvdriver.Redact(dbURL))
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read confirmation: %w", err)
	}
	if errors.Is(err, io.EOF) && line == "" {
		fmt.Fprintln(stderr)
		return false, errors.New("down aborted: no confirmation on stdin (use -y to skip it)")
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "yes" || answer == "y", nil
}
