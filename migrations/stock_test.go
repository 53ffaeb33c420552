package migrations_test

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source"
	_ "github.com/golang-migrate/migrate/v4/source/file"
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

// pgx5URL turns a pgtest URL into one for golang-migrate, with extra query
// parameters.
func pgx5URL(t *testing.T, raw string, params map[string]string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "pgx5"
	q := u.Query()
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// The folder holds only valid migration pairs, which golang-migrate's own
// file source reads (the Go files it ignores), and the embedded set is the
// same.
func TestFolderHoldsMigrationPairs(t *testing.T) {
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[uint][]string{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		m, err := source.DefaultParse(e.Name())
		if err != nil {
			t.Errorf("%s is not a golang-migrate file name: %v", e.Name(), err)
			continue
		}
		dirs[m.Version] = append(dirs[m.Version], string(m.Direction))
	}
	var versions []uint
	for v, d := range dirs {
		slices.Sort(d)
		if !slices.Equal(d, []string{"down", "up"}) {
			t.Errorf("version %d has %q, want one up and one down", v, d)
		}
		versions = append(versions, v)
	}
	slices.Sort(versions)
	if !slices.Equal(versions, migrations.Versions()) {
		t.Errorf("folder versions %v, embedded %v", versions, migrations.Versions())
	}
	for i, v := range versions {
		if v != uint(i+1) {
			t.Errorf("versions %v are not 1..n", versions)
			break
		}
	}
}

// golang-migrate's file source and pgx5 driver, as the stock CLI uses them,
// with the names set in the URL.
func TestStockFileSource(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	m, err := migrate.New("file://"+dir, pgx5URL(t, raw, map[string]string{
		migrations.SlotSetting: "stock_file", migrations.PublicationSetting: "stock_pub"}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(); err != nil {
		t.Fatalf("Up: %v", err)
	}
	conn := connect(t, ctx, raw)
	s := inspect(t, ctx, conn)
	if !slices.Equal(s.Slots, []string{"stock_file"}) || !slices.Equal(s.Publications, []string{"stock_pub"}) || len(s.Functions) != 23 {
		t.Fatalf("after stock Up: %+v", s)
	}
	// lenkwerk's runner works on what the stock one made, and back.
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != lastVersion() || dirty {
		t.Fatalf("Version = %d %v %v", v, dirty, err)
	}
	if err := m.Down(); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after stock Down: %+v", s)
	}
}

// The stock CLI itself, built from the golang-migrate module we depend on.
func TestStockCLI(t *testing.T) {
	ctx := testContext(t)
	bin := filepath.Join(t.TempDir(), "migrate")
	build := exec.CommandContext(ctx, "go", "build", "-tags", "pgx5", "-o", bin, "github.com/golang-migrate/migrate/v4/cmd/migrate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the stock migrate CLI: %v\n%s", err, out)
	}
	raw := pgtest.NewDatabase(t)
	dbURL := pgx5URL(t, raw, map[string]string{migrations.SlotSetting: "stock_cli"})
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, append([]string{"-path", ".", "-database", dbURL}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("migrate %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("up")
	conn := connect(t, ctx, raw)
	if s := inspect(t, ctx, conn); !slices.Equal(s.Slots, []string{"stock_cli"}) || !slices.Equal(s.Publications, []string{migrations.DefaultPublication}) {
		t.Fatalf("after migrate up: %+v", s)
	}
	if out := run("version"); strings.TrimSpace(out) != fmt.Sprint(lastVersion()) {
		t.Fatalf("migrate version: %q", out)
	}
	run("down", "-all")
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after migrate down -all: %+v", s)
	}
}

// On wal_level=replica the stock path fails in migration 1, which writes
// nothing: the only trace is version 1 marked dirty, which the message
// explains and force -1 clears.
func TestStockWalLevelReplica(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	raw := c.NewDatabase(t)
	m, err := migrate.NewWithSourceInstance("iofs", mustIOFS(t), pgx5URL(t, raw, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.Up()
	if err == nil {
		t.Fatal("stock Up on wal_level=replica succeeded")
	}
	for _, want := range []string{"wal_level = logical", "ALTER SYSTEM SET wal_level = logical", "restart", "force -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	conn := connect(t, ctx, raw)
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("failed stock Up changed the database: %+v", s)
	}
	if v, dirty, err := m.Version(); err != nil || v != 1 || !dirty {
		t.Fatalf("version %d dirty %v, %v; want 1 dirty", v, dirty, err)
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != 1 || !dirty {
		t.Fatalf("lenkwerk Version = %d %v %v; want 1 dirty", v, dirty, err)
	}
	if err := migrations.Up(ctx, raw, migrations.Options{}); !errors.Is(err, migrations.ErrWalLevel) {
		t.Fatalf("lenkwerk Up: %v, want ErrWalLevel first", err)
	}
	if err := migrations.Force(ctx, raw, 0); err != nil {
		t.Fatalf("Force 0: %v", err)
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != 0 || dirty {
		t.Fatalf("after Force 0: %d %v %v", v, dirty, err)
	}
}

func TestDirtyVersionSaysHowOut(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	conn := connect(t, ctx, raw)
	// A slot of the same name makes migration 7 fail.
	mustExec(t, ctx, conn, `SELECT pg_create_logical_replication_slot('dirty_test', 'pgoutput')`)
	opts := migrations.Options{Slot: "dirty_test"}
	err := migrations.Up(ctx, raw, opts)
	if err == nil {
		t.Fatal("Up with an existing slot succeeded")
	}
	for _, want := range []string{"7/u replication_slot", `replication slot "dirty_test" already exists`, "pg_drop_replication_slot", "lenkwerk migrate force 6"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != 7 || !dirty {
		t.Fatalf("Version = %d %v %v; want 7 dirty", v, dirty, err)
	}
	err = migrations.Up(ctx, raw, opts)
	if !errors.Is(err, migrations.ErrDirty) || !strings.Contains(err.Error(), "lenkwerk migrate force 6") {
		t.Fatalf("Up on a dirty version: %v", err)
	}
	if err := migrations.Force(ctx, raw, 99); err == nil {
		t.Fatal("Force to an unknown version succeeded")
	}
	mustExec(t, ctx, conn, `SELECT pg_drop_replication_slot('dirty_test')`)
	if err := migrations.Force(ctx, raw, 6); err != nil {
		t.Fatalf("Force 6: %v", err)
	}
	if err := migrations.Up(ctx, raw, opts); err != nil {
		t.Fatalf("Up after force: %v", err)
	}
	if s := inspect(t, ctx, conn); !slices.Equal(s.Slots, []string{"dirty_test"}) {
		t.Fatalf("slots %q", s.Slots)
	}
}

func TestBadURLsKeepPasswordsOut(t *testing.T) {
	ctx := testContext(t)
	for _, raw := range []string{
		"postgres://lenkwerk:s3cr3t-pw@127.0.0.1:1/lenkwerk?sslmode=disable&connect_timeout=2",
		"mysql://lenkwerk:s3cr3t-pw@127.0.0.1/lenkwerk",
		"postgres://lenkwerk:s3cr3t-pw@[::1/x",
		"",
	} {
		for name, call := range map[string]func() error{
			"Up":      func() error { return migrations.Up(ctx, raw, migrations.Options{}) },
			"Down":    func() error { return migrations.Down(ctx, raw, 1, migrations.Options{}) },
			"Version": func() error { _, _, err := migrations.Version(ctx, raw); return err },
			"Force":   func() error { return migrations.Force(ctx, raw, 1) },
		} {
			err := call()
			if err == nil {
				t.Errorf("%s(%q) succeeded", name, raw)
				continue
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("%s: password in error: %v", name, err)
			}
		}
	}
}

func mustIOFS(t *testing.T) source.Driver {
	t.Helper()
	d, err := iofs.New(migrations.FS(), ".")
	if err != nil {
		t.Fatal(err)
	}
	return d
}
