package converge_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// fixture is a small Lenkwerk-shaped schema, made here rather than by the
// migrations so the checker is tested on its own: Bagger tables (an
// inheritance child among them), a table keyed by the default template with
// a primary key in non-column order, a timestamptz written in another time
// zone, and a table outside the publication.
const fixture = `
CREATE SCHEMA storage;
CREATE TABLE storage.time_bound (valid_from timestamp NOT NULL DEFAULT '-infinity', valid_until timestamp NOT NULL DEFAULT 'infinity');
CREATE TABLE storage.config (id serial UNIQUE, key text PRIMARY KEY, value json NOT NULL);
CREATE TABLE storage.postgres_instance (id serial UNIQUE, host varchar, port int, username varchar NOT NULL, status smallint NOT NULL DEFAULT 0, PRIMARY KEY (host, port));
CREATE TABLE storage.servermap (id serial PRIMARY KEY, server_map json NOT NULL);
CREATE TABLE storage.dimension (id serial UNIQUE, ordinality int NOT NULL, default_val varchar DEFAULT 'notexist', fieldname varchar PRIMARY KEY) INHERITS (storage.time_bound);
CREATE TABLE public.event (a int, b text, at timestamptz, PRIMARY KEY (b, a));
CREATE TABLE public.hidden (id int PRIMARY KEY);
CREATE PUBLICATION bagger_lw_storage FOR TABLE storage.config, storage.postgres_instance, storage.servermap, storage.dimension, public.event;

SET TimeZone = 'America/New_York';
INSERT INTO storage.time_bound DEFAULT VALUES;
INSERT INTO storage.config (key, value) VALUES ('a', '{"x":1}'), ('slash/key', '"v"');
INSERT INTO storage.postgres_instance (host, port, username, status) VALUES ('db1', 5432, 'bagger', 3);
INSERT INTO storage.servermap (server_map) VALUES ('{"gen":1}'), ('{"gen":2}'), ('{"gen":3}');
INSERT INTO storage.dimension (ordinality, fieldname) VALUES (1, 'day');
INSERT INTO public.event VALUES (1, 'x', '2024-01-01 12:00:00');
INSERT INTO public.hidden VALUES (1);
`

// mirror is what the agent must write for the fixture, to_jsonb text
// written out by hand.
var mirror = map[string]string{
	"/Config/a":                   `{"id": 1, "key": "a", "value": {"x": 1}}`,
	"/Config/slash%2Fkey":         `{"id": 2, "key": "slash/key", "value": "v"}`,
	"/PostgresInstance/db1/5432":  `{"id": 1, "host": "db1", "port": 5432, "status": 3, "username": "bagger"}`,
	"/Servermap":                  `{"id": 3, "server_map": {"gen": 3}}`,
	"/Dimension/1":                `{"id": 1, "fieldname": "day", "ordinality": 1, "valid_from": "-infinity", "default_val": "notexist", "valid_until": "infinity"}`,
	"/public/event/x/1":           `{"a": 1, "b": "x", "at": "2024-01-01T17:00:00+00:00"}`,
	"/.lenkwerk/checkpoint/lw_ag": `{"lsn": "0/16B3748"}`,
}

func setup(t *testing.T, prefix string) (*pgx.Conn, *kvdriver.Store) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, fixture); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	store, err := kvdriver.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	for k, v := range mirror {
		if _, err := store.Put(ctx, prefix+k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	return conn, store
}

func check(t *testing.T, db converge.DB, store *kvdriver.Store, opts converge.Options) converge.Diff {
	t.Helper()
	d, err := converge.Check(context.Background(), db, store, opts)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return d
}

func TestCheckEqual(t *testing.T) {
	conn, store := setup(t, "")
	d := check(t, conn, store, converge.Options{})
	if !d.Equal() {
		t.Fatalf("store written by hand differs:\n%s", d)
	}
	if got, want := d.Expected, len(mirror)-1; got != want {
		t.Errorf("Expected = %d keys, want %d (checkpoint not counted)", got, want)
	}
	if d.Revision == 0 {
		t.Errorf("Revision = 0, want the listing's revision")
	}
	if !strings.HasSuffix(d.String(), ": equal") {
		t.Errorf("String() = %q", d.String())
	}
}

func TestCheckPrefix(t *testing.T) {
	conn, store := setup(t, "/bagger")
	ctx := context.Background()
	// A key outside the prefix is none of the agent's business.
	if _, err := store.Put(ctx, "/other/key", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	if d := check(t, conn, store, converge.Options{Prefix: "/bagger"}); !d.Equal() {
		t.Fatalf("prefixed mirror differs:\n%s", d)
	}
	// Without the prefix every key is missing and every stored key unexpected.
	d := check(t, conn, store, converge.Options{})
	if len(d.Missing) != len(mirror)-1 || len(d.Unexpected) != len(mirror)+1 {
		t.Fatalf("without the prefix: %d missing, %d unexpected:\n%s", len(d.Missing), len(d.Unexpected), d)
	}
}

// breakage breaks a mirror, on the database side (conn) or the store's.
type breakage func(ctx context.Context, conn *pgx.Conn, store *kvdriver.Store) error

// execSQL runs stmt in the database.
func execSQL(stmt string) breakage {
	return func(ctx context.Context, c *pgx.Conn, _ *kvdriver.Store) error {
		_, err := c.Exec(ctx, stmt)
		return err
	}
}

// putKey writes value at key in the store.
func putKey(key, value string) breakage {
	return func(ctx context.Context, _ *pgx.Conn, s *kvdriver.Store) error {
		_, err := s.Put(ctx, key, []byte(value))
		return err
	}
}

// deleteKey deletes key from the store.
func deleteKey(key string) breakage {
	return func(ctx context.Context, _ *pgx.Conn, s *kvdriver.Store) error {
		_, err := s.Delete(ctx, key)
		return err
	}
}

func TestCheckDetects(t *testing.T) {
	for _, tc := range []struct {
		name string
		// change breaks the mirror (store or database side).
		change                         breakage
		missing, unexpected, different []string
	}{
		{
			name:    "missing key",
			change:  deleteKey("/Config/a"),
			missing: []string{"/Config/a"},
		},
		{
			name:    "new row not mirrored",
			change:  execSQL(`INSERT INTO storage.postgres_instance (host, port, username) VALUES ('db2', 6432, 'b')`),
			missing: []string{"/PostgresInstance/db2/6432"},
		},
		{
			name:       "extra key",
			change:     putKey("/Config/gone", `{"id": 9, "key": "gone", "value": 1}`),
			unexpected: []string{"/Config/gone"},
		},
		{
			name:       "deleted row still mirrored",
			change:     execSQL(`DELETE FROM public.event`),
			unexpected: []string{"/public/event/x/1"},
		},
		{
			name:       "moved key: old key left, new key missing",
			change:     execSQL(`UPDATE storage.postgres_instance SET port = 5433`),
			missing:    []string{"/PostgresInstance/db1/5433"},
			unexpected: []string{"/PostgresInstance/db1/5432"},
		},
		{
			name:      "value differs only in formatting",
			change:    putKey("/Config/a", `{"id":1,"key":"a","value":{"x":1}}`),
			different: []string{"/Config/a"},
		},
		{
			name:      "stale value",
			change:    execSQL(`UPDATE storage.postgres_instance SET status = 1`),
			different: []string{"/PostgresInstance/db1/5432"},
		},
		{
			name:      "older servermap generation",
			change:    putKey("/Servermap", `{"id": 2, "server_map": {"gen": 2}}`),
			different: []string{"/Servermap"},
		},
		{
			name:      "newer servermap generation",
			change:    execSQL(`INSERT INTO storage.servermap (server_map) VALUES ('{"gen":4}')`),
			different: []string{"/Servermap"},
		},
		{
			name:       "servermap emptied",
			change:     execSQL(`TRUNCATE storage.servermap`),
			unexpected: []string{"/Servermap"},
		},
		{
			name: "everything at once",
			change: func(ctx context.Context, c *pgx.Conn, s *kvdriver.Store) error {
				if _, err := c.Exec(ctx, `UPDATE storage.config SET value = '[1,2]' WHERE key = 'slash/key'`); err != nil {
					return err
				}
				if _, err := s.Delete(ctx, "/Dimension/1"); err != nil {
					return err
				}
				_, err := s.Put(ctx, "/Dimension/2", []byte(`{}`))
				return err
			},
			missing:    []string{"/Dimension/1"},
			unexpected: []string{"/Dimension/2"},
			different:  []string{"/Config/slash%2Fkey"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, store := setup(t, "")
			if err := tc.change(context.Background(), conn, store); err != nil {
				t.Fatal(err)
			}
			d := check(t, conn, store, converge.Options{})
			if d.Equal() {
				t.Fatalf("difference not detected")
			}
			var missing, unexpected, different []string
			for _, e := range d.Missing {
				missing = append(missing, e.Key)
			}
			for _, e := range d.Unexpected {
				unexpected = append(unexpected, e.Key)
			}
			for _, m := range d.Different {
				different = append(different, m.Key)
				if len(m.Want) == 0 || len(m.Got) == 0 {
					t.Errorf("%s: mismatch without both values: want %q got %q", m.Key, m.Want, m.Got)
				}
			}
			if fmt.Sprint(missing) != fmt.Sprint(tc.missing) || fmt.Sprint(unexpected) != fmt.Sprint(tc.unexpected) || fmt.Sprint(different) != fmt.Sprint(tc.different) {
				t.Fatalf("got missing %v unexpected %v different %v\nwant missing %v unexpected %v different %v\n%s",
					missing, unexpected, different, tc.missing, tc.unexpected, tc.different, d)
			}
			for _, k := range append(append(missing, unexpected...), different...) {
				if !strings.Contains(d.String(), k) {
					t.Errorf("String() does not name %s:\n%s", k, d)
				}
			}
		})
	}
}

func TestDiffStringIsBounded(t *testing.T) {
	conn, store := setup(t, "")
	ctx := context.Background()
	big := `{"pad": "` + strings.Repeat("x", 10000) + `"}`
	for i := range 50 {
		if _, err := store.Put(ctx, fmt.Sprintf("/Config/extra%02d", i), []byte(big)); err != nil {
			t.Fatal(err)
		}
	}
	d := check(t, conn, store, converge.Options{})
	if len(d.Unexpected) != 50 {
		t.Fatalf("%d unexpected keys, want all 50 in the Diff", len(d.Unexpected))
	}
	s := d.String()
	if len(s) > 8000 {
		t.Fatalf("String() is %d bytes: not bounded", len(s))
	}
	if !strings.Contains(s, "and 40 more") || !strings.Contains(s, "(10011 bytes)") {
		t.Fatalf("String() does not say what it left out:\n%s", s)
	}
}

func TestWait(t *testing.T) {
	conn, store := setup(t, "")
	ctx := context.Background()
	url := converge.URL(conn.Config().ConnString())
	if _, err := store.Delete(ctx, "/Config/a"); err != nil {
		t.Fatal(err)
	}

	// Never fixed: Wait gives up at the timeout and names the key.
	start := time.Now()
	d, err := converge.Wait(ctx, url, store, converge.Options{}, 700*time.Millisecond)
	if !errors.Is(err, converge.ErrNotConverged) || len(d.Missing) != 1 || !strings.Contains(err.Error(), "/Config/a") {
		t.Fatalf("Wait on a broken mirror: diff %v, err %v", d, err)
	}
	if el := time.Since(start); el < 700*time.Millisecond || el > 5*time.Second {
		t.Fatalf("Wait returned after %v, want about 700ms", el)
	}

	// Fixed while waiting: Wait returns once equal.
	go func() {
		time.Sleep(300 * time.Millisecond) // the fix must come while Wait polls
		_, _ = store.Put(ctx, "/Config/a", []byte(mirror["/Config/a"]))
	}()
	d, err = converge.Wait(ctx, url, store, converge.Options{}, 30*time.Second)
	if err != nil || !d.Equal() {
		t.Fatalf("Wait after the fix: %v\n%s", err, d)
	}

	// A database that cannot be reached is an error, not a difference.
	_, err = converge.Wait(ctx, converge.URL("postgres://nobody@127.0.0.1:1/x?sslmode=disable&connect_timeout=1"), store, converge.Options{}, 500*time.Millisecond)
	if err == nil || errors.Is(err, converge.ErrNotConverged) {
		t.Fatalf("Wait against no database: %v", err)
	}
}

func TestCheckErrors(t *testing.T) {
	conn, store := setup(t, "")
	if _, err := converge.Check(context.Background(), conn, store, converge.Options{Publication: "nope"}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("unknown publication: %v", err)
	}
	if _, err := converge.Check(context.Background(), conn, store, converge.Options{Prefix: "bad/"}); err == nil {
		t.Fatal("bad prefix accepted")
	}
	// Two tables mapped to one key cannot be mirrored.
	opts := converge.Options{Templates: map[string]string{"public.event": "/Config/a"}}
	if _, err := converge.Check(context.Background(), conn, store, opts); err == nil || !strings.Contains(err.Error(), "/Config/a") {
		t.Fatalf("key shared by two tables: %v", err)
	}
	// Nor two rows of one table.
	if _, err := conn.Exec(context.Background(), `INSERT INTO public.event VALUES (2, 'y', '2024-01-01 17:00:00+00')`); err != nil {
		t.Fatal(err)
	}
	opts = converge.Options{Templates: map[string]string{"public.event": "/Event/{at}"}}
	if _, err := converge.Check(context.Background(), conn, store, opts); err == nil || !strings.Contains(err.Error(), "two rows") {
		t.Fatalf("key shared by two rows: %v", err)
	}
}
