package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/bagger/lenkwerk/migrations/baggertest"
)

// migrateRun runs the migrate command with stdin and returns its output.
func migrateRun(ctx context.Context, stdin string, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = runMigrate(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

// The migrate tests use a private cluster: this package may get a TestMain
// of someone else's, and slot names are cluster-wide.
func TestMigrateCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := pgtest.StartCluster(t, pgtest.Options{})
	url := c.NewDatabase(t)
	t.Setenv("LENKWERK_DATABASE_URL", url)
	latest := migrations.Versions()[len(migrations.Versions())-1]

	step := func(stdin, wantOut string, args ...string) {
		t.Helper()
		out, errOut, err := migrateRun(ctx, stdin, args...)
		if err != nil {
			t.Fatalf("migrate %q: %v\n%s", args, err, errOut)
		}
		if !strings.Contains(out, wantOut) {
			t.Fatalf("migrate %q printed %q, want %q", args, out, wantOut)
		}
	}
	version := func() uint {
		t.Helper()
		v, dirty, err := migrations.Version(ctx, url)
		if err != nil || dirty {
			t.Fatalf("Version: %d %v %v", v, dirty, err)
		}
		return v
	}

	v := func(n uint) string { return fmt.Sprintf("version %d", n) }
	step("", v(0)+fmt.Sprintf(" (latest is %d)", latest), "version")
	// Flags after the action, the URL from the environment.
	step("", "applied 7/u replication_slot", "up", "--slot", "cmd_slot")
	step("", v(latest)+" (latest)", "version")
	if got := version(); got != latest {
		t.Fatalf("after up: version %d", got)
	}
	step("", v(latest-2), "down", "2")
	step("", v(latest), "up")
	step("", "version 3", "goto", "3")
	step("", "version 2", "force", "2")
	step("", "version 3", "force", "3")
	step("", v(latest), "goto", fmt.Sprint(latest))

	// down without N asks; anything but yes, or no answer, keeps everything.
	for _, stdin := range []string{"no\n", "", "maybe"} {
		_, errOut, err := migrateRun(ctx, stdin, "down")
		if err == nil || !strings.Contains(err.Error(), "aborted") {
			t.Fatalf("down answered %q: %v", stdin, err)
		}
		if !strings.Contains(errOut, "Type yes to continue") || !strings.Contains(errOut, "ALL the Bagger cluster state") {
			t.Fatalf("down prompt: %q", errOut)
		}
		if got := version(); got != latest {
			t.Fatalf("down answered %q changed the version to %d", stdin, got)
		}
	}
	step("yes\n", "version 0", "down")
	step("", v(latest), "--slot=cmd_slot", "up")
	step("", "version 0", "-y", "down")
}

func TestMigrateCommandErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv("LENKWERK_DATABASE_URL", "")
	for _, c := range []struct {
		args  []string
		usage bool   // errUsage, explained on stderr
		want  string // in the error or on stderr
	}{
		{[]string{"up"}, true, "no database"},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x"}, true, "no action"},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x", "sideways"}, true, `unknown action "sideways"`},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x", "down", "-1"}, false, "flag provided but not defined"},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x", "down", "zero"}, true, "positive number"},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x", "goto"}, true, "one argument"},
		{[]string{"--database-url", "postgres://x@127.0.0.1/x", "force", "v1"}, true, "invalid version"},
		{[]string{"--database-url", "mysql://u:s3cr3t@127.0.0.1/x", "up"}, false, `unsupported database URL scheme "mysql"`},
		{[]string{"--database-url", "postgres://u:s3cr3t@127.0.0.1:1/x?connect_timeout=2", "up"}, false, "connect to postgres://u:xxxxx@127.0.0.1:1/x"},
		{[]string{"--database-url", "postgres://u:s3cr3t@127.0.0.1:1/x", "--slot", "Bad", "up"}, false, "invalid slot name"},
		{[]string{"--database-url", "postgres://u:s3cr3t@127.0.0.1:1/x", "force", "99"}, false, "no migration has version 99"},
	} {
		_, errOut, err := migrateRun(ctx, "", c.args...)
		if err == nil {
			t.Errorf("migrate %q succeeded", c.args)
			continue
		}
		if got := errors.Is(err, errUsage); got != c.usage {
			t.Errorf("migrate %q: usage error %v, want %v (%v)", c.args, got, c.usage, err)
		}
		if text := err.Error() + errOut; !strings.Contains(text, c.want) || strings.Contains(text, "s3cr3t") {
			t.Errorf("migrate %q: %v\n%s\nwant %q and no password", c.args, err, errOut, c.want)
		}
	}
}

// The built binary: exit status and messages as an operator sees them.
func TestMigrateBinary(t *testing.T) {
	bin := lenkwerkBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	cmd := exec.CommandContext(ctx, bin, "migrate", "--database-url", c.NewDatabase(t), "up")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("migrate up on wal_level=replica: %v\n%s", err, out)
	}
	for _, want := range []string{"lenkwerk migrate:", "wal_level = replica", "ALTER SYSTEM SET wal_level = logical", "nothing was changed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	cmd = exec.CommandContext(ctx, bin, "migrate", "--database-url", c.URL("postgres", ""), "down")
	cmd.Stdin = strings.NewReader("")
	out, err = cmd.CombinedOutput()
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "use -y") {
		t.Fatalf("migrate down without an answer: %v\n%s", err, out)
	}
}

// --copy provisions a storage node's copy: it works without wal_level=logical
// and creates no publication and no slot.
func TestMigrateCommandCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	url := c.NewDatabase(t)

	if _, errOut, err := migrateRun(ctx, "", "up", "--database-url", url); err == nil {
		t.Fatalf("up of a source on wal_level=replica succeeded\n%s", errOut)
	}
	if _, errOut, err := migrateRun(ctx, "", "force", "0", "--database-url", url); err != nil {
		t.Fatalf("force 0: %v\n%s", err, errOut)
	}
	out, errOut, err := migrateRun(ctx, "", "up", "--copy", "--database-url", url)
	if err != nil {
		t.Fatalf("up --copy: %v\n%s", err, errOut)
	}
	if latest := migrations.Versions()[len(migrations.Versions())-1]; !strings.Contains(out, fmt.Sprintf("version %d", latest)) {
		t.Fatalf("up --copy printed %q", out)
	}
	conn := connectLocal(t, ctx, url)
	var pubs, slots, tables int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()), (SELECT count(*) FROM pg_tables WHERE schemaname = 'storage')`).Scan(&pubs, &slots, &tables); err != nil {
		t.Fatal(err)
	}
	if pubs != 0 || slots != 0 || tables != 7 {
		t.Fatalf("copy has %d publications, %d slots, %d storage tables; want 0, 0, 7", pubs, slots, tables)
	}
	if _, errOut, err := migrateRun(ctx, "", "up", "--copy", "--slot", "x", "--database-url", url); err == nil {
		t.Fatalf("--copy with --slot accepted\n%s", errOut)
	}
}

// migrate adopt takes Bagger's extension over and says what it did; up
// points at it.
func TestMigrateAdopt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := baggertest.StartCluster(t, pgtest.Options{})
	url := c.NewDatabase(t)
	baggertest.Install(t, ctx, url)
	t.Setenv("LENKWERK_DATABASE_URL", url)

	_, _, err := migrateRun(ctx, "", "up")
	if !errors.Is(err, migrations.ErrBaggerInstalled) || !strings.Contains(err.Error(), "'lenkwerk migrate adopt'") {
		t.Fatalf("up on Bagger's database: %v", err)
	}
	if _, errOut, err := migrateRun(ctx, "", "adopt", "now"); !errors.Is(err, errUsage) || !strings.Contains(errOut, "adopt takes no arguments") {
		t.Fatalf("adopt now: %v\n%s", err, errOut)
	}
	latest := migrations.Versions()[len(migrations.Versions())-1]
	out, errOut, err := migrateRun(ctx, "", "adopt")
	if err != nil {
		t.Fatalf("adopt: %v\n%s", err, errOut)
	}
	for _, want := range []string{"applied 3/u storage_schema (adoption)\n",
		"adopted bagger_lw_storage 0.0.1 in one transaction, every row kept (postgres_instance 3, servermap 2, dimension 3, index 1, index_field 2, config 4)\n",
		"applied 7/u replication_slot\n", fmt.Sprintf("version %d (latest)\n", latest)} {
		if !strings.Contains(out, want) {
			t.Errorf("adopt printed\n%s\nwant %q", out, want)
		}
	}
	// Run again, it finds the adoption done.
	if out, errOut, err := migrateRun(ctx, "", "adopt"); err != nil || !strings.Contains(out, "adopted bagger_lw_storage 0.0.1 before") {
		t.Fatalf("adopt again: %v\n%s%s", err, out, errOut)
	}
}
