package migrations_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// configConn returns a connection to a migrated database acting as
// lenkwerk_config, the role the configuration tools use.
func configConn(t *testing.T, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn := connect(t, ctx, migrated(t, ctx))
	if _, err := conn.Exec(ctx, "SET ROLE lenkwerk_config"); err != nil {
		t.Fatal(err)
	}
	return conn
}

func mustExec(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestInstanceFunctions(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)

	var id, status int
	var host, user string
	if err := conn.QueryRow(ctx, `SELECT id, host, status, username FROM storage.register_pg_instance('db1.example', 5432, 'bagger')`).
		Scan(&id, &host, &status, &user); err != nil {
		t.Fatal(err)
	}
	if host != "db1.example" || user != "bagger" || status != 0 {
		t.Fatalf("registered %s %s status %d; want offline (0)", host, user, status)
	}
	mustExec(t, ctx, conn, `SELECT storage.register_pg_instance('db2.example', 5432, 'bagger')`)
	mustExec(t, ctx, conn, `SELECT storage.register_pg_instance('db1.example', 5433, 'bagger')`)
	if _, err := conn.Exec(ctx, `SELECT storage.register_pg_instance('db1.example', 5432, 'other')`); sqlState(err) != "23505" {
		t.Fatalf("registering host and port twice: %v, want unique violation", err)
	}

	for _, s := range []int{1, 2, 3, 0, 3} {
		if err := conn.QueryRow(ctx, `SELECT status FROM storage.set_pg_instance_status($1, $2)`, id, s).Scan(&status); err != nil || status != s {
			t.Fatalf("set_pg_instance_status(%d) = %d, %v", s, status, err)
		}
	}
	// SQLSTATEs as Bagger's (its UPDATE breaks NOT NULL or the CHECK), with
	// messages that name the valid values.
	for _, c := range []struct {
		status any
		state  string
	}{{4, "23514"}, {-1, "23514"}, {nil, "23502"}} {
		_, err := conn.Exec(ctx, `SELECT storage.set_pg_instance_status($1, $2)`, id, c.status)
		if sqlState(err) != c.state || !strings.Contains(err.Error(), "0 (offline), 1 (read-only), 2 (write-only) or 3 (online)") {
			t.Fatalf("set_pg_instance_status(%v): %v, want a clear %s", c.status, err, c.state)
		}
	}
	// An unknown id: NULL, as Bagger's, whatever the status.
	for _, s := range []any{1, nil, 7} {
		var missing *string
		if err := conn.QueryRow(ctx, `SELECT storage.set_pg_instance_status(999999, $1)::text`, s).Scan(&missing); err != nil || missing != nil {
			t.Fatalf("set_pg_instance_status of an unknown id, status %v = %v, %v; want NULL", s, deref(missing), err)
		}
	}

	if err := conn.QueryRow(ctx, `SELECT host, status FROM storage.get_pg_instance_by_id($1)`, id).Scan(&host, &status); err != nil || host != "db1.example" || status != 3 {
		t.Fatalf("get_pg_instance_by_id = %s %d, %v", host, status, err)
	}
	var gotID int
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.get_pg_instance_by_host_and_port('db1.example', 5432)`).Scan(&gotID); err != nil || gotID != id {
		t.Fatalf("get_pg_instance_by_host_and_port = %d, %v; want %d", gotID, err, id)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM storage.list_pg_instances()`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("list_pg_instances: %d rows, %v; want 3", n, err)
	}
	if err := conn.QueryRow(ctx, `SELECT storage.servermap_rotate_num()`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("servermap_rotate_num = %d, %v; want 2 (two instances on db1)", n, err)
	}
}

func TestDimensionFunctions(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)
	order := func() string {
		t.Helper()
		return strings.Join(queryStrings(t, ctx, conn, `SELECT ordinality || ':' || fieldname FROM storage.get_dimensions()`), " ")
	}
	var ord int
	var def, from, until string
	if err := conn.QueryRow(ctx, `SELECT ordinality, default_val, valid_from::text, valid_until::text
		FROM storage.append_dimension('host', NULL, NULL, NULL)`).Scan(&ord, &def, &from, &until); err != nil {
		t.Fatal(err)
	}
	if ord != 0 || def != "notexist" || from != "-infinity" || until != "infinity" {
		t.Fatalf("append_dimension = %d %s %s %s; want 0 notexist -infinity infinity", ord, def, from, until)
	}
	mustExec(t, ctx, conn, `SELECT storage.append_dimension('app', 'none', '2020-01-01', NULL)`)
	mustExec(t, ctx, conn, `SELECT storage.append_dimension('level', NULL, NULL, NULL)`)
	if got, want := order(), "0:host 1:app 2:level"; got != want {
		t.Fatalf("after appends: %s, want %s", got, want)
	}
	// insert_dimension shifts the dimensions at and after its ordinality.
	if err := conn.QueryRow(ctx, `SELECT ordinality FROM storage.insert_dimension(1, 'region', NULL, NULL, NULL)`).Scan(&ord); err != nil || ord != 1 {
		t.Fatalf("insert_dimension = %d, %v", ord, err)
	}
	if got, want := order(), "0:host 1:region 2:app 3:level"; got != want {
		t.Fatalf("after insert_dimension: %s, want %s", got, want)
	}
	mustExec(t, ctx, conn, `SELECT storage.insert_dimension(0, 'tenant', NULL, NULL, NULL)`)
	if got, want := order(), "0:tenant 1:host 2:region 3:app 4:level"; got != want {
		t.Fatalf("after insert_dimension at 0: %s, want %s", got, want)
	}
	var id int
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.dimension WHERE fieldname = 'app'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT valid_until::text FROM storage.expire_dimension($1, '2030-01-01 00:00')`, id).Scan(&until); err != nil || until != "2030-01-01 00:00:00" {
		t.Fatalf("expire_dimension = %s, %v", until, err)
	}
	var inRange bool
	if err := conn.QueryRow(ctx, `SELECT storage.validrange(d) @> '2025-06-01'::timestamp FROM storage.dimension d WHERE id = $1`, id).Scan(&inRange); err != nil || !inRange {
		t.Fatalf("validrange contains 2025-06-01: %v, %v", inRange, err)
	}
	// The interface table holds no rows of its own.
	if _, err := conn.Exec(ctx, `INSERT INTO storage.time_bound DEFAULT VALUES`); err == nil {
		t.Fatal("a row was inserted into storage.time_bound")
	}
}

func TestIndexFunctions(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)
	var idx int
	var am, tblspc, until string
	if err := conn.QueryRow(ctx, `SELECT id, access_method, tablespc, valid_until::text FROM storage.save_index('by_host', 'btree', NULL, NULL, NULL)`).
		Scan(&idx, &am, &tblspc, &until); err != nil {
		t.Fatal(err)
	}
	if am != "btree" || tblspc != "pg_default" || until != "infinity" {
		t.Fatalf("save_index = %s %s %s", am, tblspc, until)
	}
	// Saving again updates access method and valid_until, keeps the id.
	var again int
	if err := conn.QueryRow(ctx, `SELECT id, access_method, valid_until::text FROM storage.save_index('by_host', 'gin', 'fast', '2031-01-01', NULL)`).
		Scan(&again, &am, &until); err != nil {
		t.Fatal(err)
	}
	if again != idx || am != "gin" || until != "2031-01-01 00:00:00" {
		t.Fatalf("save_index update = %d %s %s", again, am, until)
	}
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.get_index('by_host')`).Scan(&again); err != nil || again != idx {
		t.Fatalf("get_index = %d, %v", again, err)
	}
	if _, err := conn.Exec(ctx, `SELECT storage.save_index('name_longer_than_16', 'btree', NULL, NULL, NULL)`); err == nil {
		t.Fatal("an index name over 16 characters was accepted")
	}

	fields := func() string {
		t.Helper()
		return strings.Join(queryStrings(t, ctx, conn, `SELECT ordinality || ':' || expression FROM storage.get_index_fields($1)`, idx), " ")
	}
	mustExec(t, ctx, conn, `SELECT storage.append_index_field($1, 'host', NULL, NULL)`, idx)
	mustExec(t, ctx, conn, `SELECT storage.append_index_field($1, 'ts', NULL, NULL)`, idx)
	var fieldID, ord int
	var from string
	if err := conn.QueryRow(ctx, `SELECT id, ordinality, valid_from::text FROM storage.insert_index_field($1, 1, 'lower(app)', NULL, NULL)`, idx).
		Scan(&fieldID, &ord, &from); err != nil {
		t.Fatal(err)
	}
	if ord != 1 || from != "-infinity" {
		t.Fatalf("insert_index_field = %d %s", ord, from)
	}
	if got, want := fields(), "0:host 1:lower(app) 2:ts"; got != want {
		t.Fatalf("fields %s, want %s", got, want)
	}
	// Another index's fields are not shifted.
	var other int
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.save_index('by_app', 'hash', NULL, NULL, NULL)`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, conn, `SELECT storage.append_index_field($1, 'app', NULL, NULL)`, other)
	mustExec(t, ctx, conn, `SELECT storage.insert_index_field($1, 0, 'first', NULL, NULL)`, idx)
	if got, want := fields(), "0:first 1:host 2:lower(app) 3:ts"; got != want {
		t.Fatalf("fields %s, want %s", got, want)
	}
	var otherOrd int
	if err := conn.QueryRow(ctx, `SELECT ordinality FROM storage.get_index_fields($1)`, other).Scan(&otherOrd); err != nil || otherOrd != 0 {
		t.Fatalf("other index's field at %d, %v; want 0", otherOrd, err)
	}
	if err := conn.QueryRow(ctx, `SELECT valid_until::text FROM storage.expire_index_field($1, '2032-01-01')`, fieldID).Scan(&until); err != nil || until != "2032-01-01 00:00:00" {
		t.Fatalf("expire_index_field = %s, %v", until, err)
	}
	if err := conn.QueryRow(ctx, `SELECT valid_until::text FROM storage.expire_index($1, '2033-01-01')`, idx).Scan(&until); err != nil || until != "2033-01-01 00:00:00" {
		t.Fatalf("expire_index = %s, %v", until, err)
	}
	if _, err := conn.Exec(ctx, `SELECT storage.append_index_field(999999, 'x', NULL, NULL)`); sqlState(err) != "23503" {
		t.Fatalf("field of an unknown index: %v, want foreign key violation", err)
	}
}

func TestConfigAndServermapFunctions(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)
	var key, value string
	if err := conn.QueryRow(ctx, `SELECT key, value::text FROM storage.save_config('kvstore_type', '"etcd"')`).Scan(&key, &value); err != nil || value != `"etcd"` {
		t.Fatalf("save_config = %s %s, %v", key, value, err)
	}
	var id1, id2 int
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.get_config('kvstore_type')`).Scan(&id1); err != nil {
		t.Fatalf("get_config: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT id, value::text FROM storage.save_config('kvstore_type', '"pgkv"')`).Scan(&id2, &value); err != nil || value != `"pgkv"` || id2 != id1 {
		t.Fatalf("save_config replace = %d %s, %v; want id %d", id2, value, err, id1)
	}
	if err := conn.QueryRow(ctx, `SELECT value->>'port' FROM storage.get_config('kvstore_config')`).Scan(new(*string)); err != nil {
		t.Fatalf("get_config of a missing key: %v", err)
	}
	var missing *string
	if err := conn.QueryRow(ctx, `SELECT key FROM storage.get_config('nope')`).Scan(&missing); err != nil || missing != nil {
		t.Fatalf("get_config('nope') = %v, %v; want NULL", missing, err)
	}

	var none *int
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.most_recent_servermap()`).Scan(&none); err != nil || none != nil {
		t.Fatalf("most_recent_servermap of none = %v, %v", none, err)
	}
	var g1, g2, recent int
	for _, id := range []*int{&g1, &g2} {
		if err := conn.QueryRow(ctx, `SELECT id FROM storage.save_servermap('{"gen": 1}')`).Scan(id); err != nil {
			t.Fatalf("save_servermap: %v", err)
		}
	}
	if g2 <= g1 {
		t.Fatalf("save_servermap did not insert a new generation: %d then %d", g1, g2)
	}
	if err := conn.QueryRow(ctx, `SELECT id FROM storage.most_recent_servermap()`).Scan(&recent); err != nil || recent != g2 {
		t.Fatalf("most_recent_servermap = %d, %v; want %d", recent, err, g2)
	}
	if err := conn.QueryRow(ctx, `SELECT server_map->>'gen' FROM storage.get_servermap($1)`, g1).Scan(&value); err != nil || value != "1" {
		t.Fatalf("get_servermap = %s, %v", value, err)
	}
}
