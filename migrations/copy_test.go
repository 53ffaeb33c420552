package migrations_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/golang-migrate/migrate/v4"
)

// A local copy (lenkwerk follow) is provisioned on an ordinary server
// (wal_level=replica): the same tables and functions, no publication, no
// slot, and lenkwerk.follow_state; the runner and the stock CLI (through
// the URL setting) agree, and a copy and a source are never mixed up.
func TestCopy(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	raw := c.NewDatabase(t)
	if err := migrations.Up(ctx, raw, migrations.Options{Copy: true, Slot: "x"}); err == nil {
		t.Fatal("Up as a copy with a slot name succeeded")
	}
	if err := migrations.Up(ctx, raw, migrations.Options{Copy: true}); err != nil {
		t.Fatalf("Up as a copy on wal_level=replica: %v", err)
	}
	conn := connect(t, ctx, raw)
	s := inspect(t, ctx, conn)
	// A source's functions and inbound_from_kvstore, Bagger's storage
	// agents' (migration 9).
	wantFunctions := append(inspect(t, ctx, connect(t, ctx, migrated(t, ctx))).Functions, "storage.inbound_from_kvstore(regclass,json)")
	slices.Sort(wantFunctions)
	if len(s.Publications) != 0 || len(s.Slots) != 0 || !slices.Equal(s.Functions, wantFunctions) || !slices.Equal(s.Schemas, []string{"lenkwerk", "storage"}) {
		t.Fatalf("copy: %+v", s)
	}
	if !slices.Contains(s.Tables, "lenkwerk.follow_state") {
		t.Fatalf("copy has no lenkwerk.follow_state: %v", s.Tables)
	}
	names, err := migrations.Names(ctx, conn)
	if err != nil || names == nil || !names.Copy || names.Slot != "" || names.Publication != "" {
		t.Fatalf("Names = %+v, %v; want a copy without names", names, err)
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != lastVersion() || dirty {
		t.Fatalf("Version = %d %v %v", v, dirty, err)
	}
	// Migrating the copy as a source is refused before the wal_level check.
	err = migrations.Up(ctx, raw, migrations.Options{})
	if err == nil || errors.Is(err, migrations.ErrWalLevel) || !strings.Contains(err.Error(), "local copy") {
		t.Fatalf("Up as a source on a copy: %v", err)
	}
	if err := migrations.Down(ctx, raw, 0, migrations.Options{Copy: true}); err != nil {
		t.Fatalf("Down a copy: %v", err)
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after Down: %+v", s)
	}

	// The stock path: lenkwerk.role=copy in the URL.
	m, err := migrate.NewWithSourceInstance("iofs", mustIOFS(t), pgx5URL(t, raw, map[string]string{migrations.RoleSetting: "copy"}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(); err != nil {
		t.Fatalf("stock Up as a copy: %v", err)
	}
	if s := inspect(t, ctx, conn); len(s.Publications)+len(s.Slots) != 0 || !slices.Contains(s.Tables, "lenkwerk.follow_state") {
		t.Fatalf("stock copy: %+v", s)
	}
	if err := m.Down(); err != nil {
		t.Fatalf("stock Down: %v", err)
	}

	// A misspelt role changes nothing.
	bad, err := migrate.NewWithSourceInstance("iofs", mustIOFS(t), pgx5URL(t, raw, map[string]string{migrations.RoleSetting: "Copy"}))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Up(); err == nil || !strings.Contains(err.Error(), `lenkwerk.role is "Copy"`) {
		t.Fatalf("stock Up with role Copy: %v", err)
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("failed Up changed the database: %+v", s)
	}
}

// A source is never migrated as a copy.
func TestCopyRefusesSource(t *testing.T) {
	ctx := testContext(t)
	raw := migrated(t, ctx)
	err := migrations.Up(ctx, raw, migrations.Options{Copy: true})
	if err == nil || !strings.Contains(err.Error(), "Lenkwerk source") {
		t.Fatalf("Up as a copy on a source: %v", err)
	}
	conn := connect(t, ctx, raw)
	if s := inspect(t, ctx, conn); len(s.Slots) != 1 || len(s.Publications) != 1 {
		t.Fatalf("source changed: %+v", s)
	}
}
