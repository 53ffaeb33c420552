package secure

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestLeastPrivilege: lenkwerk_agent (certificate, verify-full) reads the
// Lenkwerk tables and cannot change them; a pgkv consumer in
// lenkwerk_kv_reader (scram-sha-256 over verify-full, the password from
// PGPASSFILE, none in the URL) can List and Watch and cannot Put or
// Delete.
func TestLeastPrivilege(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := newPKI(t)
	pg := startPG(t, p)

	t.Run("agent", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, pg.url(agentRole, p.agent))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM storage.config`).Scan(&n); err != nil {
			t.Errorf("agent cannot read storage.config: %v", err)
		}
		for _, sql := range []string{
			`INSERT INTO storage.config (key, value) VALUES ('x', '1')`,
			`UPDATE storage.config SET value = '2'`,
			`DELETE FROM storage.config`,
			`CREATE TABLE storage.evil (x int)`,
			`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.config`,
		} {
			if _, err := conn.Exec(ctx, sql); !isInsufficientPrivilege(err) {
				t.Errorf("%s as %s: %v, want insufficient privilege (42501) or must be owner", sql, agentRole, err)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, `CREATE ROLE `+operatorRole+` LOGIN IN ROLE lenkwerk_config`); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, pg.url(operatorRole, p.operator))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `INSERT INTO storage.config (key, value) VALUES ('by_operator', '1')`); err != nil {
			t.Errorf("%s (lenkwerk_config) cannot write storage.config: %v", operatorRole, err)
		}
		for _, sql := range []string{
			`DELETE FROM storage.servermap`, // generations are only ever inserted
			`CREATE TABLE storage.evil (x int)`,
			`DROP TABLE storage.config`,
			`ALTER TABLE storage.config ADD COLUMN evil int`,
			`ALTER PUBLICATION bagger_lw_storage DROP TABLE storage.config`,
			`SELECT pg_drop_replication_slot('lw_agent')`,
		} {
			if _, err := conn.Exec(ctx, sql); !isInsufficientPrivilege(err) {
				t.Errorf("%s as %s (lenkwerk_config): %v, want insufficient privilege (42501)", sql, operatorRole, err)
			}
		}
	})

	t.Run("pgkv reader", func(t *testing.T) {
		// The store's owner (here the superuser) creates the schema and
		// the lenkwerk_kv_reader role; a consumer logs in as a member.
		owner, err := kvdriver.Open(ctx, pg.url("postgres", p.postgres, "schema", "lenkwerk_kv"))
		if err != nil {
			t.Fatal(err)
		}
		defer owner.Close()
		if _, err := owner.Put(ctx, "/Config/a", []byte(`"a"`)); err != nil {
			t.Fatal(err)
		}
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE lenkwerk_kv_reader`, readerUser, readerPass)); err != nil {
			t.Fatal(err)
		}
		passFile := filepath.Join(t.TempDir(), "pgpass")
		line := fmt.Sprintf("127.0.0.1:%d:%s:%s:%s\n", pg.c.Port(), pg.name, readerUser, readerPass)
		if err := os.WriteFile(passFile, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PGPASSFILE", passFile)
		t.Setenv("PGPASSWORD", "")
		readerURL := pg.url(readerUser, certs.Pair{}, "schema", "lenkwerk_kv", "migrate", "false")
		if strings.Contains(readerURL, readerPass) {
			t.Fatal("the reader URL holds the password")
		}
		reader, err := kvdriver.Open(ctx, readerURL)
		if err != nil {
			t.Fatalf("open pgkv as %s (password from PGPASSFILE): %v", readerUser, err)
		}
		defer reader.Close()
		kvs, rev, err := reader.List(ctx, "/Config")
		if err != nil || len(kvs) != 1 {
			t.Fatalf("reader List = %v, %v", kvs, err)
		}
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := reader.Watch(wctx, "/Config", rev)
		if _, err := owner.Put(ctx, "/Config/b", []byte(`"b"`)); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-wch:
			if r.Err != nil || len(r.Events) == 0 || r.Events[0].Key != "/Config/b" {
				t.Fatalf("reader watch: %+v", r)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("reader watch saw no change within 20s")
		}
		if _, err := reader.Put(ctx, "/Config/c", []byte(`"c"`)); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("reader Put: %v, want permission denied", err)
		}
		if _, err := reader.Delete(ctx, "/Config/a"); err == nil {
			t.Error("reader Delete succeeded")
		}

		// Without the password file the reader is refused: the password
		// came from there, and nothing weaker than scram over TLS works.
		t.Setenv("PGPASSFILE", filepath.Join(t.TempDir(), "none"))
		if s, err := kvdriver.Open(ctx, readerURL); err == nil {
			s.Close()
			t.Error("reader opened without a password")
		}
	})
}

// isInsufficientPrivilege reports SQLSTATE 42501 (insufficient privilege,
// also "must be owner").
func isInsufficientPrivilege(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42501"
}
