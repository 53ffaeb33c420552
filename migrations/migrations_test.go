package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// publishedTables are the tables the publication must list, exactly.
var publishedTables = []string{"config", "dimension", "index", "index_field", "postgres_instance", "servermap"}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// migrated returns the URL of a fresh database migrated up.
func migrated(t *testing.T, ctx context.Context) string {
	t.Helper()
	url := pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, url, migrations.Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	return url
}

func queryStrings(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func queryBool(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string, args ...any) bool {
	t.Helper()
	var b bool
	if err := conn.QueryRow(ctx, sql, args...).Scan(&b); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return b
}

// state describes what Lenkwerk objects a database holds.
type state struct {
	Tables, Functions, Publications, Slots []string
	Schemas                                []string
}

func inspect(t *testing.T, ctx context.Context, conn *pgx.Conn) state {
	t.Helper()
	return state{
		Tables: queryStrings(t, ctx, conn, `SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relname <> 'schema_migrations' ORDER BY 1`),
		Functions: queryStrings(t, ctx, conn, `SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`),
		Publications: queryStrings(t, ctx, conn, `SELECT pubname::text FROM pg_publication ORDER BY 1`),
		Slots:        queryStrings(t, ctx, conn, `SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database() ORDER BY 1`),
		Schemas:      queryStrings(t, ctx, conn, `SELECT nspname::text FROM pg_namespace WHERE nspname IN ('storage', 'lenkwerk') ORDER BY 1`),
	}
}

func (s state) empty() bool {
	return len(s.Tables)+len(s.Functions)+len(s.Publications)+len(s.Slots)+len(s.Schemas) == 0
}

func lastVersion() uint { v := migrations.Versions(); return v[len(v)-1] }

func TestUpDownUp(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.NewDatabase(t)
	conn := connect(t, ctx, url)
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("fresh database not empty: %+v", s)
	}
	var applied []string
	if err := migrations.Up(ctx, url, migrations.Options{Log: func(m string) { applied = append(applied, m) }}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if got, want := len(applied), len(migrations.Versions()); got != want {
		t.Errorf("Log told of %d migrations (%q), want %d", got, applied, want)
	}
	up := inspect(t, ctx, conn)
	wantTables := []string{"lenkwerk.setting", "storage.config", "storage.dimension", "storage.index", "storage.index_field",
		"storage.postgres_instance", "storage.servermap", "storage.time_bound"}
	if !slices.Equal(up.Tables, wantTables) {
		t.Errorf("tables = %q, want %q", up.Tables, wantTables)
	}
	if got, want := len(up.Functions), 33; got != want {
		t.Errorf("%d functions, want %d: %q", got, want, up.Functions)
	}
	if !slices.Equal(up.Publications, []string{migrations.DefaultPublication}) {
		t.Errorf("publications = %q", up.Publications)
	}
	if !slices.Equal(up.Slots, []string{migrations.DefaultSlot}) {
		t.Errorf("slots = %q", up.Slots)
	}
	v, dirty, err := migrations.Version(ctx, url)
	if err != nil || v != lastVersion() || dirty {
		t.Fatalf("Version = %d, %v, %v; want %d, clean", v, dirty, err, lastVersion())
	}
	// Up again is a no-op.
	if err := migrations.Up(ctx, url, migrations.Options{}); err != nil {
		t.Fatalf("second Up: %v", err)
	}

	// Each down step on its own, then all the way up and down again.
	for i := len(migrations.Versions()) - 1; i >= 0; i-- {
		if err := migrations.Down(ctx, url, 1, migrations.Options{}); err != nil {
			t.Fatalf("Down 1 from step %d: %v", i+1, err)
		}
		want := uint(0)
		if i > 0 {
			want = migrations.Versions()[i-1]
		}
		if v, dirty, err := migrations.Version(ctx, url); err != nil || v != want || dirty {
			t.Fatalf("after a step down: Version = %d, %v, %v; want %d", v, dirty, err, want)
		}
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after down to 0: %+v", s)
	}
	if err := migrations.Up(ctx, url, migrations.Options{}); err != nil {
		t.Fatalf("Up after down: %v", err)
	}
	if s := inspect(t, ctx, conn); !slices.Equal(s.Tables, up.Tables) || !slices.Equal(s.Functions, up.Functions) ||
		!slices.Equal(s.Slots, up.Slots) || !slices.Equal(s.Publications, up.Publications) {
		t.Fatalf("second up differs: %+v, first %+v", s, up)
	}
	if err := migrations.Goto(ctx, url, 3, migrations.Options{}); err != nil {
		t.Fatalf("Goto 3: %v", err)
	}
	if v, _, _ := migrations.Version(ctx, url); v != 3 {
		t.Fatalf("after Goto 3: version %d", v)
	}
	if err := migrations.Down(ctx, url, 0, migrations.Options{}); err != nil {
		t.Fatalf("Down all: %v", err)
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after Down all: %+v", s)
	}
}

func TestPublicationAndSlot(t *testing.T) {
	ctx := testContext(t)
	conn := connect(t, ctx, migrated(t, ctx))
	got := queryStrings(t, ctx, conn, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`,
		migrations.DefaultPublication)
	var want []string
	for _, tb := range publishedTables {
		want = append(want, "storage."+tb)
	}
	if !slices.Equal(got, want) {
		t.Errorf("publication tables = %q, want %q", got, want)
	}
	if !queryBool(t, ctx, conn, `SELECT pubinsert AND pubupdate AND pubdelete AND NOT puballtables FROM pg_publication WHERE pubname = $1`,
		migrations.DefaultPublication) {
		t.Error("publication does not publish insert, update and delete of its tables")
	}
	var plugin, slotType, db string
	if err := conn.QueryRow(ctx, `SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = $1`,
		migrations.DefaultSlot).Scan(&plugin, &slotType, &db); err != nil {
		t.Fatalf("slot: %v", err)
	}
	if plugin != "pgoutput" || slotType != "logical" {
		t.Errorf("slot plugin %s, type %s; want pgoutput, logical", plugin, slotType)
	}
	// Replica identity FULL, so deletes carry id (and index_id) and updates
	// carry unchanged TOAST values.
	full := queryStrings(t, ctx, conn, `SELECT relname::text FROM pg_class WHERE relnamespace = 'storage'::regnamespace
		AND relkind = 'r' AND relreplident = 'f' ORDER BY 1`)
	if !slices.Equal(full, publishedTables) {
		t.Errorf("tables with REPLICA IDENTITY FULL = %q, want %q", full, publishedTables)
	}
	// Comments are the operator's documentation.
	for _, c := range []struct{ sql, want string }{
		{`SELECT col_description('storage.postgres_instance'::regclass, 5)`, "bit 1 - can write"},
		{`SELECT obj_description('storage.postgres_instance'::regclass, 'pg_class')`, "NEVER STORE PASSWORDS"},
		{`SELECT col_description('storage.index_field'::regclass, (SELECT attnum FROM pg_attribute WHERE attrelid = 'storage.index_field'::regclass AND attname = 'expression'))`, "IMMUTABLE"},
		{`SELECT obj_description('storage.register_pg_instance(text,int,text)'::regprocedure, 'pg_proc')`, "offline"},
	} {
		var text *string
		if err := conn.QueryRow(ctx, c.sql).Scan(&text); err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		if text == nil || !strings.Contains(*text, c.want) {
			t.Errorf("%s: comment lacks %q", c.sql, c.want)
		}
	}
	var uncommented []string
	uncommented = queryStrings(t, ctx, conn, `SELECT c.relname::text FROM pg_class c WHERE relnamespace = 'storage'::regnamespace
		AND relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL`)
	uncommented = append(uncommented, queryStrings(t, ctx, conn, `SELECT p.oid::regprocedure::text FROM pg_proc p
		WHERE pronamespace = 'storage'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL`)...)
	if len(uncommented) > 0 {
		t.Errorf("without comment: %q", uncommented)
	}
}

func TestCustomNames(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.NewDatabase(t)
	opts := migrations.Options{Slot: "lw_custom_slot", Publication: "lw_custom_pub"}
	if err := migrations.Up(ctx, url, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}
	conn := connect(t, ctx, url)
	s := inspect(t, ctx, conn)
	if !slices.Equal(s.Publications, []string{"lw_custom_pub"}) || !slices.Equal(s.Slots, []string{"lw_custom_slot"}) {
		t.Fatalf("publications %q, slots %q", s.Publications, s.Slots)
	}
	names, err := migrations.Names(ctx, conn)
	if err != nil || names == nil || *names != (migrations.Provisioned{Publication: "lw_custom_pub", Slot: "lw_custom_slot"}) {
		t.Fatalf("Names = %+v, %v", names, err)
	}
	// Other names than those recorded are refused before anything runs.
	err = migrations.Down(ctx, url, 0, migrations.Options{Slot: "lw_agent"})
	if err == nil || !strings.Contains(err.Error(), `"lw_custom_slot"`) {
		t.Fatalf("Down with another slot name: %v", err)
	}
	if v, dirty, _ := migrations.Version(ctx, url); v != lastVersion() || dirty {
		t.Fatalf("refused Down changed the version: %d, %v", v, dirty)
	}
	// Without options, down finds the recorded names.
	if err := migrations.Down(ctx, url, 0, migrations.Options{}); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("after Down: %+v", s)
	}
	if err := migrations.Up(ctx, url, migrations.Options{Slot: "Bad-Name"}); err == nil {
		t.Fatal("Up with an invalid slot name succeeded")
	}
}

// The names can also come from the database's settings (stock CLI users).
func TestNamesFromDatabaseSettings(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.NewDatabase(t)
	conn := connect(t, ctx, url)
	dbname := conn.Config().Database
	for _, stmt := range []string{
		fmt.Sprintf(`ALTER DATABASE %s SET lenkwerk.slot_name = 'from_db_setting'`, pgx.Identifier{dbname}.Sanitize()),
		fmt.Sprintf(`ALTER DATABASE %s SET lenkwerk.publication_name = 'pub_from_db'`, pgx.Identifier{dbname}.Sanitize()),
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := migrations.Up(ctx, url, migrations.Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	s := inspect(t, ctx, conn)
	if !slices.Equal(s.Publications, []string{"pub_from_db"}) || !slices.Equal(s.Slots, []string{"from_db_setting"}) {
		t.Fatalf("publications %q, slots %q", s.Publications, s.Slots)
	}
}

func TestWalLevelReplicaChangesNothing(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	url := c.NewDatabase(t)
	err := migrations.Up(ctx, url, migrations.Options{})
	if !errors.Is(err, migrations.ErrWalLevel) {
		t.Fatalf("Up on wal_level=replica: %v, want ErrWalLevel", err)
	}
	if !strings.Contains(err.Error(), "ALTER SYSTEM SET wal_level = logical") || !strings.Contains(err.Error(), "restart") {
		t.Errorf("error does not say how to fix it: %v", err)
	}
	if err := migrations.Goto(ctx, url, 3, migrations.Options{}); !errors.Is(err, migrations.ErrWalLevel) {
		t.Fatalf("Goto 3 on wal_level=replica: %v, want ErrWalLevel", err)
	}
	conn := connect(t, ctx, url)
	if s := inspect(t, ctx, conn); !s.empty() {
		t.Fatalf("refused Up changed the database: %+v", s)
	}
	if queryBool(t, ctx, conn, `SELECT to_regclass('schema_migrations') IS NOT NULL`) {
		t.Fatal("refused Up created schema_migrations")
	}
	if n := queryStrings(t, ctx, conn, `SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'lenkwerk%'`); len(n) > 0 {
		t.Fatalf("refused Up created roles %q", n)
	}
}
