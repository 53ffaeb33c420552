package migrations_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// lockFunctions take an advisory lock on a pair of int keys, the agents'
// key space; every one of them could hold the agent off.
var lockFunctions = []string{
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
	"pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
}

// The agents' lock (19543, hashtext(slot)) can be taken by lenkwerk_agent
// (and superusers) only: not by lenkwerk_config members, pgkv's readers or
// a pgkv store owner in the same database, nor by a role with nothing but
// PUBLIC's rights; one-key locks, which golang-migrate takes for pgkv's
// migrations, stay with everyone. A private cluster: roles are cluster-wide.
func TestAgentLockOnlyForAgent(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.StartCluster(t, pgtest.Options{})
	raw := c.NewDatabase(t)
	if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	admin := connect(t, ctx, raw)
	db := admin.Config().Database
	for _, sql := range []string{
		`CREATE ROLE lw_operator LOGIN IN ROLE lenkwerk_config`,
		`CREATE ROLE lw_plain LOGIN`,
		`CREATE ROLE lw_kv_owner LOGIN`,
		`GRANT CREATE ON DATABASE ` + pgx.Identifier{db}.Sanitize() + ` TO lw_kv_owner`,
	} {
		mustExec(t, ctx, admin, sql)
	}
	// pgkv in the Lenkwerk database: the superuser's store creates the
	// reader role; a store owned by a plain role migrates under
	// golang-migrate's (one-key) advisory lock.
	openPGKV := func(u, schema string) {
		t.Helper()
		s, err := kvdriver.Open(ctx, u+"&schema="+schema)
		if err != nil {
			t.Fatalf("open pgkv schema %s: %v", schema, err)
		}
		if _, err := s.Put(ctx, "/k", []byte(`1`)); err != nil {
			t.Fatalf("pgkv put as the owner of schema %s: %v", schema, err)
		}
		s.Close()
	}
	openPGKV(raw, "kv_admin")
	mustExec(t, ctx, admin, `CREATE ROLE lw_node LOGIN IN ROLE lenkwerk_kv_reader`)
	openPGKV(userURL(t, raw, "lw_kv_owner"), "kv_owned")

	key := fmt.Sprintf("19543, hashtext('%s')", migrations.DefaultSlot)
	for i, role := range []string{"lw_operator", "lw_plain", "lw_node", "lw_kv_owner"} {
		conn := connect(t, ctx, userURL(t, raw, role))
		if role == "lw_operator" {
			mustExec(t, ctx, conn, `SET ROLE lenkwerk_config`)
		}
		for _, f := range lockFunctions {
			wantDenied(t, ctx, conn, "SELECT "+f+"("+key+")")
		}
		// One-key locks are another key space, left to everyone.
		if !queryBool(t, ctx, conn, `SELECT pg_try_advisory_lock($1)`, 19543+i) {
			t.Errorf("%s cannot take a one-key advisory lock", role)
		}
	}
	agent := connect(t, ctx, userURL(t, raw, "lenkwerk_agent"))
	for _, f := range lockFunctions {
		mustExec(t, ctx, agent, "SELECT "+f+"("+key+")")
	}
	// Whatever overloads the server has, none in the two-key space is left
	// to PUBLIC.
	if open := queryStrings(t, ctx, admin, `SELECT p.oid::regprocedure::text FROM pg_proc p
		WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE '%advisory%lock%' AND p.proname NOT LIKE '%unlock%'
		  AND p.proargtypes = '23 23'::oidvector AND (p.proacl IS NULL OR array_to_string(p.proacl, ',') ~ '(^|,)=X')`); len(open) > 0 {
		t.Errorf("two-key lock functions executable by PUBLIC: %q", open)
	}

	// Down gives them back to PUBLIC (PostgreSQL's default).
	if err := migrations.Goto(ctx, raw, 7, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	plain := connect(t, ctx, userURL(t, raw, "lw_plain"))
	mustExec(t, ctx, plain, "SELECT pg_try_advisory_lock("+key+")")
}

// mirrorGuardCase is one row the Lenkwerk tables must refuse.
type mirrorGuardCase struct {
	name string
	sql  string
	want []string // in the error message
}

// Every class of value the agent cannot mirror is refused when it is
// written, through the functions and by plain DML or COPY as
// lenkwerk_config, with an error naming the table, the row and the limit;
// values at the limits are accepted.
func TestMirrorGuards(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	big := func(n int) string { return `'"` + strings.Repeat("x", n) + `"'` }
	mustExec(t, ctx, conn, `SELECT storage.save_index('idx', 'btree', 'pg_default', NULL, NULL)`)
	for _, c := range []mirrorGuardCase{
		{"empty config key", `SELECT storage.save_config('', '1')`, []string{"storage.config: key must not be empty"}},
		{"empty config key, INSERT", `INSERT INTO storage.config (key, value) VALUES ('', '1')`, []string{"storage.config: key must not be empty"}},
		{"NUL", `SELECT storage.save_config('nul', '"\u0000"')`, []string{"storage.config row (key 'nul')", "no jsonb form", `\u0000 cannot be converted to text`}},
		{"NUL in a servermap", `SELECT storage.save_servermap('{"a": "\u0000"}')`, []string{"storage.servermap row (id ", "no jsonb form"}},
		{"lone high surrogate", `SELECT storage.save_config('sur', '"\ud800"')`, []string{"storage.config row (key 'sur')", "Unicode low surrogate must follow a high surrogate"}},
		{"lone low surrogate, UPDATE", `UPDATE storage.config SET value = '["\udc00"]' WHERE key = 'ok'`, []string{"storage.config row (key 'ok')", "no jsonb form"}},
		{"number out of range", `INSERT INTO storage.config (key, value) VALUES ('num', '1e1000000')`, []string{"storage.config row (key 'num')", "value overflows numeric format"}},
		{"nested 501 deep", `SELECT storage.save_config('deep', '` + deep(501) + `')`, []string{"storage.config row (key 'deep')", "more than 500 levels deep"}},
		{"nested 10,000 deep", `SELECT storage.save_servermap('` + deep(10000) + `')`, []string{"storage.servermap row (id ", "more than 500 levels deep"}},
		{"config key over 512 bytes", `SELECT storage.save_config(repeat('k', 513), '1')`, []string{"storage.config: key 'kkkk", "(513 bytes) is 513 bytes in the row's key-value store key, more than 512"}},
		{"config key escaped over 512 bytes", `SELECT storage.save_config(repeat('a/', 128) || 'b', '1')`, []string{"is 513 bytes in the row's key-value store key, more than 512"}},
		{"100 KB host", `SELECT storage.register_pg_instance(repeat('h', 100000), 5432, 'u')`, []string{"storage.postgres_instance: host 'hhhh", "(100000 bytes) is 100000 bytes", "more than 253"}},
		{"host over 253 bytes, INSERT", `INSERT INTO storage.postgres_instance (host, port, username) VALUES (repeat('h', 254), 1, 'u')`, []string{"more than 253"}},
		{"empty host", `SELECT storage.register_pg_instance('', 5432, 'u')`, []string{"storage.postgres_instance: host must not be empty"}},
		{"config row over 1 MiB", `SELECT storage.save_config('big', ` + big(1<<20) + `)`, []string{"storage.config row (key 'big')", "more than the 1,048,576 (1 MiB) Lenkwerk mirrors"}},
		{"username over 1 MiB", `SELECT storage.register_pg_instance('h2', 1, repeat('u', 1048576))`, []string{"storage.postgres_instance row (host:port 'h2:1')", "1 MiB"}},
		{"dimension over 1 MiB", `SELECT storage.append_dimension('f', repeat('d', 1048576), NULL, NULL)`, []string{"storage.dimension row (id ", "1 MiB"}},
		{"index over 1 MiB", `SELECT storage.save_index('i2', repeat('m', 1048576), 'pg_default', NULL, NULL)`, []string{"storage.index row (id ", "1 MiB"}},
		{"index field over 1 MiB", `SELECT storage.append_index_field((SELECT id FROM storage.index WHERE indexname = 'idx'), repeat('e', 1048576), NULL, NULL)`, []string{"storage.index_field row (id ", "1 MiB"}},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			mustExec(t, ctx, conn, `INSERT INTO storage.config (key, value) VALUES ('ok', '1') ON CONFLICT DO NOTHING`)
			wantRefused(t, ctx, conn, c)
		})
	}

	// COPY (binary, as pgx sends it) is checked too.
	_, err := conn.CopyFrom(ctx, pgx.Identifier{"storage", "config"}, []string{"key", "value"}, pgx.CopyFromRows([][]any{{"", "1"}}))
	if sqlState(err) != "23514" || !strings.Contains(err.Error(), "key must not be empty") {
		t.Errorf("COPY of an empty key: %v, want a check violation", err)
	}

	// At the limits: accepted.
	for _, sql := range []string{
		`SELECT storage.save_config(repeat('k', 512), '1')`,
		`SELECT storage.save_config(repeat('a/', 127) || 'bc', '1')`,
		`SELECT storage.save_config('deep', '` + deep(500) + `')`,
		`SELECT storage.save_config('big', ` + big(1<<20-100) + `)`,
		`SELECT storage.register_pg_instance(repeat('h', 253), 5432, 'u')`,
		`SELECT storage.save_config('unicode', '"\ud83d\ude00 \u00e9"')`,
	} {
		mustExec(t, ctx, conn, sql)
	}
	if n := queryStrings(t, ctx, conn, `SELECT table_name || ': ' || problem FROM storage.unmirrorable_rows()`); len(n) > 0 {
		t.Errorf("unmirrorable rows listed where there are none: %q", n)
	}
}

func wantRefused(t *testing.T, ctx context.Context, conn *pgx.Conn, c mirrorGuardCase) {
	t.Helper()
	_, err := conn.Exec(ctx, c.sql)
	if err == nil {
		t.Fatalf("%s: accepted", c.name)
	}
	if sqlState(err) != "23514" {
		t.Fatalf("%s: %v, want a check violation (23514)", c.name, err)
	}
	for _, w := range c.want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q lacks %q", c.name, err, w)
		}
	}
	// A short message, whatever the size of the value.
	if len(err.Error()) > 600 {
		t.Errorf("%s: error is %d bytes long", c.name, len(err.Error()))
	}
}

// Rows from before migration 8 that the agent cannot mirror do not stop
// the migration: their table's constraint stays NOT VALID, the other
// tables' are validated, storage.unmirrorable_rows() names them, and once
// they are fixed the constraint validates. New rows are checked at once.
func TestMirrorGuardsExistingRows(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	if err := migrations.Goto(ctx, raw, 7, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, raw)
	mustExec(t, ctx, conn, `INSERT INTO storage.config (key, value) VALUES ('', '1'), ('nul', '"\u0000"'), ('fine', '2')`)
	mustExec(t, ctx, conn, `SELECT storage.register_pg_instance('h', 1, 'u')`)
	if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
		t.Fatalf("Up with unmirrorable rows: %v", err)
	}
	valid := func(table string) bool {
		return queryBool(t, ctx, conn, `SELECT convalidated FROM pg_constraint WHERE conname = $1 AND conrelid = $2::regclass`, table+"_mirrorable", "storage."+table)
	}
	if valid("config") {
		t.Error("config_mirrorable validated over unmirrorable rows")
	}
	for _, tb := range publishedTables {
		if tb != "config" && !valid(tb) {
			t.Errorf("%s_mirrorable not validated", tb)
		}
	}
	got := queryStrings(t, ctx, conn, `SELECT table_name || ': ' || problem FROM storage.unmirrorable_rows()`)
	if all := strings.Join(got, "\n"); len(got) != 2 || !strings.Contains(all, "storage.config: storage.config: key must not be empty") || !strings.Contains(all, "storage.config: storage.config row (key 'nul')") {
		t.Fatalf("unmirrorable rows = %q", got)
	}
	wantRefused(t, ctx, conn, mirrorGuardCase{"a new bad row", `INSERT INTO storage.config (key, value) VALUES ('nul2', '"\u0000"')`, []string{"no jsonb form"}})
	mustExec(t, ctx, conn, `DELETE FROM storage.config WHERE key IN ('', 'nul')`)
	mustExec(t, ctx, conn, `ALTER TABLE storage.config VALIDATE CONSTRAINT config_mirrorable`)
	if !valid("config") {
		t.Error("config_mirrorable not validated")
	}
}

// A local copy takes rows as the source accepted them: no guards.
func TestMirrorGuardsNotOnCopy(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, raw, migrations.Options{Copy: true}); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, raw)
	mustExec(t, ctx, conn, `INSERT INTO storage.config (key, value) VALUES ('', '1')`)
	if n := queryStrings(t, ctx, conn, `SELECT conname::text FROM pg_constraint WHERE conname LIKE '%_mirrorable'`); len(n) > 0 {
		t.Errorf("a copy has constraints %q", n)
	}
	if !queryBool(t, ctx, conn, `SELECT proacl IS NULL FROM pg_proc WHERE oid = 'pg_advisory_lock(int, int)'::regprocedure`) {
		t.Error("a copy restricts the advisory lock functions")
	}
}
