package migrations_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/bagger/lenkwerk/migrations/baggertest"
	"github.com/golang-migrate/migrate/v4"
	"github.com/jackc/pgx/v5"
)

// tables are the Bagger tables whose rows adoption keeps.
var tables = []string{"postgres_instance", "servermap", "dimension", "index", "index_field", "config"}

// snapshot is what adoption must keep: every row and every sequence's
// position.
func snapshot(t *testing.T, ctx context.Context, conn *pgx.Conn) map[string][]string {
	t.Helper()
	s := map[string][]string{}
	for _, tb := range tables {
		s[tb] = queryStrings(t, ctx, conn, `SELECT to_jsonb(t.*)::text FROM ONLY storage.`+pgx.Identifier{tb}.Sanitize()+` t ORDER BY id`)
		s[tb+"_id_seq"] = queryStrings(t, ctx, conn, `SELECT last_value || ' ' || is_called FROM storage.`+pgx.Identifier{tb + "_id_seq"}.Sanitize())
	}
	return s
}

func sameSnapshot(t *testing.T, what string, got, want map[string][]string) {
	t.Helper()
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], w)
		}
	}
}

// baggerDatabase is a fresh database of c with Bagger's extension and its
// rows installed, and a connection to it.
func baggerDatabase(t *testing.T, ctx context.Context, c *pgtest.Cluster) (string, *pgx.Conn) {
	t.Helper()
	raw := c.NewDatabase(t)
	baggertest.Install(t, ctx, raw)
	return raw, connect(t, ctx, raw)
}

// unchanged checks that a refused adoption changed nothing: the extension
// and its rows are there, and neither a Lenkwerk version nor its schema;
// checked before the transaction, not even golang-migrate's table.
func unchanged(t *testing.T, ctx context.Context, conn *pgx.Conn, dbURL string, before map[string][]string, prechecked bool) {
	t.Helper()
	if prechecked && queryBool(t, ctx, conn, `SELECT to_regclass('public.schema_migrations') IS NOT NULL`) {
		t.Error("golang-migrate's version table was created")
	}
	if !queryBool(t, ctx, conn, `SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'bagger_lw_storage')`) {
		t.Error("the extension is gone")
	}
	if queryBool(t, ctx, conn, `SELECT to_regnamespace('lenkwerk') IS NOT NULL`) {
		t.Error("schema lenkwerk was created")
	}
	if v, dirty, err := migrations.Version(ctx, dbURL); err != nil || v != 0 || dirty {
		t.Errorf("version %d, dirty %v, %v; want none", v, dirty, err)
	}
	sameSnapshot(t, "after a refused adoption", snapshot(t, ctx, conn), before)
}

// recvlogical streams slot with pg_recvlogical, as Bagger's agent does
// (AnyEvent::PgRecvlogical), until the returned stop.
func recvlogical(t *testing.T, ctx context.Context, c *pgtest.Cluster, dbURL, slot string) (stop func()) {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.BinDir(), "pg_recvlogical"), "-d", dbURL, "-S", slot, "--start", "-f", "/dev/null", "-F", "1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	conn := connect(t, ctx, dbURL)
	for !queryBool(t, ctx, conn, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1 AND active)`, slot) {
		if ctx.Err() != nil || cmd.ProcessState != nil {
			t.Fatalf("pg_recvlogical never streamed %s: %s", slot, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return stop
}

// schemaDump is the database's schema as pg_dump writes it.
func schemaDump(t *testing.T, ctx context.Context, c *pgtest.Cluster, dbURL string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, filepath.Join(c.BinDir(), "pg_dump"), "--schema-only", "--no-publications", dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	// Less its \restrict key (random per run, where pg_dump has one).
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, `\restrict `) && !strings.HasPrefix(l, `\unrestrict `) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// Bagger's own extension, installed with its rows, is adopted: the result
// is a Lenkwerk database like a new one with every row kept, the agent
// mirrors it (replacing what Bagger's agent left in the store), and down
// and up work on it. Refusals change nothing.
func TestAdoptBagger(t *testing.T) {
	c := baggertest.StartCluster(t, pgtest.Options{})

	t.Run("adopt", func(t *testing.T) {
		ctx := testContext(t)
		raw, conn := baggerDatabase(t, ctx, c)
		before := snapshot(t, ctx, conn)
		role := "bagger_tool_" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
		mustExec(t, ctx, conn, `CREATE ROLE `+role+` LOGIN`)
		t.Cleanup(func() { conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
		mustExec(t, ctx, conn, `GRANT USAGE ON SCHEMA storage TO `+role)
		mustExec(t, ctx, conn, `GRANT SELECT, INSERT, UPDATE ON storage.config TO `+role)
		// Bagger's agent's slot, nobody streaming it.
		mustExec(t, ctx, conn, `SELECT pg_create_logical_replication_slot('lw_agent', 'test_decoding')`)
		// What Bagger's agent left in the store: an envelope instead of the
		// row, and a key whose row is gone (it never propagated deletes).
		store := memStore(t, ctx)
		for k, v := range map[string]string{
			"/Config/kvstore_type": `{"schema": "storage", "tablename": "config", "operation": "INSERT", "row_data": {"id": 1, "key": "kvstore_type", "value": "etcd"}}`,
			"/Dimension/99":        `{"schema": "storage", "tablename": "dimension", "operation": "INSERT", "row_data": {"id": 99}}`,
		} {
			if _, err := store.Put(ctx, k, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}

		// up refuses the database, pointing at adopt, and changes nothing.
		err := migrations.Up(ctx, raw, migrations.Options{})
		if !errors.Is(err, migrations.ErrBaggerInstalled) || !strings.Contains(err.Error(), "lenkwerk migrate adopt") {
			t.Fatalf("Up on Bagger's database: %v", err)
		}
		unchanged(t, ctx, conn, raw, before, true)

		var log []string
		record := func(m string) { log = append(log, m) }
		if err := migrations.Adopt(ctx, raw, migrations.Options{Log: record, Note: record}); err != nil {
			t.Fatalf("Adopt: %v", err)
		}
		all := strings.Join(log, "\n")
		for _, want := range []string{"1/u require_logical_wal (adoption)", "6/u publication (adoption)",
			"adopted bagger_lw_storage 0.0.1 in one transaction, every row kept (postgres_instance 3, servermap 2, dimension 3, index 1, index_field 2, config 4)",
			`dropped Bagger's agent's replication slot "lw_agent" (test_decoding`, "7/u replication_slot",
			"roles " + role + " had privileges", "GRANT lenkwerk_config TO"} {
			if !strings.Contains(all, want) {
				t.Errorf("Adopt's log lacks %q:\n%s", want, all)
			}
		}
		if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != lastVersion() || dirty {
			t.Fatalf("after Adopt: version %d dirty %v, %v", v, dirty, err)
		}
		if queryBool(t, ctx, conn, `SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'bagger_lw_storage')`) {
			t.Fatal("the extension is still installed")
		}
		sameSnapshot(t, "after Adopt", snapshot(t, ctx, conn), before)
		var plugin string
		if err := conn.QueryRow(ctx, `SELECT plugin FROM pg_replication_slots WHERE slot_name = 'lw_agent'`).Scan(&plugin); err != nil || plugin != "pgoutput" {
			t.Fatalf("slot lw_agent: plugin %q, %v; want pgoutput", plugin, err)
		}
		// Exactly what a new Lenkwerk database has: tables, comments,
		// owners, grants, functions, replica identity.
		fresh := c.NewDatabase(t)
		if err := migrations.Up(ctx, fresh, migrations.Options{Slot: "lw_fresh"}); err != nil {
			t.Fatal(err)
		}
		if got, want := schemaDump(t, ctx, c, raw), schemaDump(t, ctx, c, fresh); got != want || !strings.Contains(got, "CREATE TABLE storage.config") {
			t.Fatalf("the adopted schema differs from a new Lenkwerk database's:\n%s", lineDiff(want, got))
		}
		got := inspect(t, ctx, conn)
		if !slices.Equal(got.Publications, []string{migrations.DefaultPublication}) || !slices.Equal(got.Slots, []string{migrations.DefaultSlot}) {
			t.Fatalf("after Adopt: %+v", got)
		}
		// The sequences go on where Bagger's stopped.
		var id int
		if err := conn.QueryRow(ctx, `SELECT id FROM storage.register_pg_instance('pg3.example', 5432, 'schaufel')`).Scan(&id); err != nil || id != 4 {
			t.Fatalf("a new instance got id %d, %v; want 4", id, err)
		}

		stopAgent := runAgent(t, ctx, raw, store)
		waitMirrored(t, ctx, raw, store)
		stopAgent()

		// Like any Lenkwerk database: all the way down, and up again.
		if err := migrations.Down(ctx, raw, 0, migrations.Options{}); err != nil {
			t.Fatalf("Down after Adopt: %v", err)
		}
		if s := inspect(t, ctx, conn); !s.empty() {
			t.Fatalf("after Down: %+v", s)
		}
		if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
			t.Fatalf("Up after Down: %v", err)
		}
		// Adopt again: nothing to adopt.
		if err := migrations.Adopt(ctx, raw, migrations.Options{}); !errors.Is(err, migrations.ErrNoBaggerExtension) {
			t.Fatalf("Adopt of a Lenkwerk database: %v", err)
		}
	})

	t.Run("mismatch", func(t *testing.T) {
		for _, c2 := range []struct {
			name  string
			setup []string
			want  []string
		}{{
			name: "objects",
			setup: []string{
				`ALTER TABLE storage.config ADD COLUMN note text`,
				`ALTER EXTENSION bagger_lw_storage DROP FUNCTION storage.enforce_retention()`,
				`DROP FUNCTION storage.enforce_retention()`,
				`CREATE TABLE storage.mine (x int)`,
				`CREATE INDEX ON storage.dimension (default_val)`,
			},
			want: []string{
				"unexpected: column storage.config.note text",
				"missing:    function storage.enforce_retention() returns void",
				"unexpected: not in the extension: table storage.mine",
				"unexpected: index CREATE INDEX dimension_default_val_idx ON storage.dimension USING btree (default_val)",
			},
		}, {
			name: "columns",
			setup: []string{`ALTER TABLE storage.config ALTER COLUMN value DROP NOT NULL`,
				`ALTER TABLE storage.index ALTER COLUMN tablespc SET DEFAULT 'fast'`},
			want: []string{"missing:    column storage.config.value json NOT NULL",
				"unexpected: column storage.config.value json\n",
				"unexpected: column storage.index.tablespc character varying NOT NULL DEFAULT 'fast'::character varying"},
		}, {
			name:  "version",
			setup: []string{`UPDATE pg_extension SET extversion = '0.0.2' WHERE extname = 'bagger_lw_storage'`},
			want:  []string{"bagger_lw_storage is at version 0.0.2; Lenkwerk adopts 0.0.1"},
		}, {
			name:  "publication",
			setup: []string{`CREATE TABLE public.other (x int)`, `ALTER PUBLICATION bagger_lw_storage ADD TABLE public.other`},
			want:  []string{"publication bagger_lw_storage publishes public.other, storage.config"},
		}} {
			t.Run(c2.name, func(t *testing.T) {
				ctx := testContext(t)
				raw, conn := baggerDatabase(t, ctx, c)
				for _, sql := range c2.setup {
					mustExec(t, ctx, conn, sql)
				}
				before := snapshot(t, ctx, conn)
				err := migrations.Adopt(ctx, raw, migrations.Options{})
				if !errors.Is(err, migrations.ErrBaggerMismatch) {
					t.Fatalf("Adopt: %v, want ErrBaggerMismatch", err)
				}
				for _, w := range append(c2.want, "nothing was changed") {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				unchanged(t, ctx, conn, raw, before, true)
			})
		}
	})

	// A failure halfway through (the drop of the extension, which a view
	// of the operator's depends on) rolls everything back.
	t.Run("one transaction", func(t *testing.T) {
		ctx := testContext(t)
		raw, conn := baggerDatabase(t, ctx, c)
		mustExec(t, ctx, conn, `CREATE VIEW public.settings AS SELECT key, value FROM storage.config`)
		before := snapshot(t, ctx, conn)
		err := migrations.Adopt(ctx, raw, migrations.Options{})
		if err == nil || !strings.Contains(err.Error(), "view public.settings depends on table storage.config") ||
			!strings.Contains(err.Error(), "Nothing was changed") {
			t.Fatalf("Adopt with a dependent view: %v", err)
		}
		unchanged(t, ctx, conn, raw, before, false)
		if n := queryStrings(t, ctx, conn, `SELECT relname::text FROM pg_class WHERE relname LIKE 'lenkwerk_adopt_%'`); len(n) > 0 {
			t.Fatalf("kept rows left behind: %q", n)
		}
		mustExec(t, ctx, conn, `DROP VIEW public.settings`)
		if err := migrations.Adopt(ctx, raw, migrations.Options{}); err != nil {
			t.Fatalf("Adopt once the view is gone: %v", err)
		}
		sameSnapshot(t, "after Adopt", snapshot(t, ctx, conn), before)
	})

	// Bagger's agent streaming its slot: refused before anything changes;
	// if it starts streaming after the adoption's transaction, the slot is
	// kept and `up` finishes once it stopped.
	t.Run("slot in use", func(t *testing.T) {
		ctx := testContext(t)
		raw, conn := baggerDatabase(t, ctx, c)
		mustExec(t, ctx, conn, `SELECT pg_create_logical_replication_slot('lw_agent', 'test_decoding')`)
		before := snapshot(t, ctx, conn)
		stop := recvlogical(t, ctx, c, raw, "lw_agent")
		err := migrations.Adopt(ctx, raw, migrations.Options{})
		if !errors.Is(err, migrations.ErrSlotInUse) || !strings.Contains(err.Error(), "pg_recvlogical") ||
			!strings.Contains(err.Error(), "stop Bagger's Lenkwerk agent") || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("Adopt with the slot streamed: %v", err)
		}
		unchanged(t, ctx, conn, raw, before, true)
		stop()

		stop = nil
		err = migrations.Adopt(ctx, raw, migrations.Options{Note: func(m string) {
			if strings.HasPrefix(m, "adopted bagger_lw_storage") {
				stop = recvlogical(t, ctx, c, raw, "lw_agent")
			}
		}})
		if !errors.Is(err, migrations.ErrSlotInUse) || !strings.Contains(err.Error(), "then run lenkwerk migrate up") {
			t.Fatalf("Adopt with the slot streamed after the transaction: %v", err)
		}
		if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != 6 || dirty {
			t.Fatalf("version %d dirty %v, %v; want 6, clean", v, dirty, err)
		}
		if !queryBool(t, ctx, conn, `SELECT plugin = 'test_decoding' AND active FROM pg_replication_slots WHERE slot_name = 'lw_agent'`) {
			t.Fatal("the streamed slot was touched")
		}
		stop()
		if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
			t.Fatalf("Up once Bagger's agent stopped: %v", err)
		}
		if !queryBool(t, ctx, conn, `SELECT plugin = 'pgoutput' FROM pg_replication_slots WHERE slot_name = 'lw_agent'`) {
			t.Fatal("the slot was not replaced")
		}
		sameSnapshot(t, "after Adopt", snapshot(t, ctx, conn), before)
	})

	// Another slot name leaves Bagger's agent's slot alone; a slot of the
	// chosen name that is not Bagger's agent's is refused.
	t.Run("slot names", func(t *testing.T) {
		ctx := testContext(t)
		raw, conn := baggerDatabase(t, ctx, c)
		mustExec(t, ctx, conn, `SELECT pg_create_logical_replication_slot('lw_agent', 'pgoutput')`)
		before := snapshot(t, ctx, conn)
		err := migrations.Adopt(ctx, raw, migrations.Options{})
		if err == nil || !strings.Contains(err.Error(), `replication slot "lw_agent" exists with plugin pgoutput, not test_decoding`) {
			t.Fatalf("Adopt with a pgoutput slot of the name: %v", err)
		}
		unchanged(t, ctx, conn, raw, before, true)
		if err := migrations.Adopt(ctx, raw, migrations.Options{Slot: "lenkwerk"}); err != nil {
			t.Fatalf("Adopt --slot lenkwerk: %v", err)
		}
		if s := inspect(t, ctx, conn); !slices.Equal(s.Slots, []string{"lenkwerk", "lw_agent"}) {
			t.Fatalf("slots %q", s.Slots)
		}
	})

	// The stock CLI stops in migration 1, which writes nothing.
	t.Run("stock CLI", func(t *testing.T) {
		ctx := testContext(t)
		raw := c.NewDatabase(t)
		baggertest.Install(t, ctx, raw)
		m, err := migrate.NewWithSourceInstance("iofs", mustIOFS(t), pgx5URL(t, raw, nil))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		err = m.Up()
		if err == nil || !strings.Contains(err.Error(), "run lenkwerk migrate adopt") || !strings.Contains(err.Error(), "force -1") {
			t.Fatalf("stock Up on Bagger's database: %v", err)
		}
		if v, dirty, err := m.Version(); err != nil || v != 1 || !dirty {
			t.Fatalf("version %d dirty %v, %v; want 1 dirty", v, dirty, err)
		}
		if err := m.Force(-1); err != nil {
			t.Fatal(err)
		}
		if err := migrations.Adopt(ctx, raw, migrations.Options{}); err != nil {
			t.Fatalf("Adopt after the stock CLI's refusal: %v", err)
		}
	})

	// A storage node's database, where Bagger's storage agent used the
	// extension, becomes a local copy for lenkwerk follow.
	t.Run("copy", func(t *testing.T) {
		ctx := testContext(t)
		raw, conn := baggerDatabase(t, ctx, c)
		before := snapshot(t, ctx, conn)
		if err := migrations.Up(ctx, raw, migrations.Options{Copy: true}); !errors.Is(err, migrations.ErrBaggerInstalled) ||
			!strings.Contains(err.Error(), "lenkwerk migrate --copy adopt") {
			t.Fatalf("Up as a copy on Bagger's database: %v", err)
		}
		if err := migrations.Adopt(ctx, raw, migrations.Options{Copy: true}); err != nil {
			t.Fatalf("Adopt as a copy: %v", err)
		}
		sameSnapshot(t, "after Adopt", snapshot(t, ctx, conn), before)
		names, err := migrations.Names(ctx, conn)
		if err != nil || names == nil || !names.Copy {
			t.Fatalf("Names = %+v, %v; want a copy", names, err)
		}
		s := inspect(t, ctx, conn)
		if len(s.Publications)+len(s.Slots) != 0 || !slices.Contains(s.Functions, "storage.inbound_from_kvstore(regclass,json)") {
			t.Fatalf("adopted copy: %+v", s)
		}
		if err := migrations.Down(ctx, raw, 0, migrations.Options{Copy: true}); err != nil {
			t.Fatalf("Down: %v", err)
		}
		if s := inspect(t, ctx, conn); !s.empty() {
			t.Fatalf("after Down: %+v", s)
		}
	})

	// What Bagger's tools see of set_pg_instance_status is what Bagger's
	// own function does: results and SQLSTATEs, for known and unknown ids.
	t.Run("set_pg_instance_status", func(t *testing.T) {
		ctx := testContext(t)
		bagger := c.NewDatabase(t)
		baggertest.Install(t, ctx, bagger)
		lenkwerk := c.NewDatabase(t)
		if err := migrations.Up(ctx, lenkwerk, migrations.Options{Slot: "lw_status"}); err != nil {
			t.Fatal(err)
		}
		lconn := connect(t, ctx, lenkwerk)
		for _, sql := range []string{
			`SELECT storage.register_pg_instance('pg1.example', 5432, 'schaufel')`,
			`SELECT storage.register_pg_instance('pg1.example', 5433, 'schaufel')`,
			`SELECT storage.register_pg_instance('pg2.example', 5432, 'schaufel')`,
		} {
			mustExec(t, ctx, lconn, sql)
		}
		call := func(conn *pgx.Conn, id, status any) string {
			var text *string
			err := conn.QueryRow(ctx, `SELECT storage.set_pg_instance_status($1, $2)::text`, id, status).Scan(&text)
			var n int
			if err == nil {
				err = conn.QueryRow(ctx, `SELECT count(*) FROM storage.set_pg_instance_status(in_id := $1, in_status := $2)`, id, status).Scan(&n)
			}
			return fmt.Sprintf("%s, %d rows, SQLSTATE %q", deref(text), n, sqlState(err))
		}
		bconn := connect(t, ctx, bagger)
		for _, in := range [][2]any{{2, 2}, {2, 0}, {2, nil}, {2, 4}, {2, -1}, {99, 1}, {99, nil}, {99, 7}, {nil, 1}} {
			if got, want := call(lconn, in[0], in[1]), call(bconn, in[0], in[1]); got != want {
				t.Errorf("set_pg_instance_status(%v, %v) = %s; Bagger's: %s", in[0], in[1], got, want)
			}
		}
	})

	t.Run("nothing to adopt", func(t *testing.T) {
		ctx := testContext(t)
		raw := c.NewDatabase(t)
		err := migrations.Adopt(ctx, raw, migrations.Options{})
		if !errors.Is(err, migrations.ErrNoBaggerExtension) || !strings.Contains(err.Error(), "lenkwerk migrate up") {
			t.Fatalf("Adopt of an empty database: %v", err)
		}
	})
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}
