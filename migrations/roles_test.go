package migrations_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// userURL returns url with its user replaced.
func userURL(t *testing.T, raw, user string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", user, cfg.Host, cfg.Port, cfg.Database)
}

func wantDenied(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) {
	t.Helper()
	_, err := conn.Exec(ctx, sql)
	if code := sqlState(err); code != "42501" {
		t.Errorf("%s: %v, want insufficient privilege (42501)", sql, err)
	}
}

func TestAgentRolePrivileges(t *testing.T) {
	ctx := testContext(t)
	url := migrated(t, ctx)
	admin := connect(t, ctx, url)
	mustExec(t, ctx, admin, `SELECT storage.register_pg_instance('h', 1, 'u')`)

	if !queryBool(t, ctx, admin, `SELECT rolcanlogin AND rolreplication AND NOT rolsuper FROM pg_roles WHERE rolname = 'lenkwerk_agent'`) {
		t.Fatal("lenkwerk_agent is not LOGIN REPLICATION (or is superuser)")
	}
	agent := connect(t, ctx, userURL(t, url, "lenkwerk_agent"))
	for _, tb := range publishedTables {
		if _, err := agent.Exec(ctx, "SELECT * FROM storage."+tb); err != nil {
			t.Errorf("agent cannot read storage.%s: %v", tb, err)
		}
	}
	for _, sql := range []string{
		`INSERT INTO storage.config (key, value) VALUES ('k', '1')`,
		`UPDATE storage.postgres_instance SET status = 3`,
		`DELETE FROM storage.postgres_instance`,
		`INSERT INTO storage.servermap (server_map) VALUES ('{}')`,
		`TRUNCATE storage.dimension`,
		`SELECT * FROM storage.time_bound`,
		`SELECT * FROM lenkwerk.setting`,
		`SELECT storage.save_config('k', '1')`,
		`SELECT storage.list_pg_instances()`,
		`DROP TABLE storage.config`,
		`CREATE TABLE storage.x (i int)`,
	} {
		wantDenied(t, ctx, agent, sql)
	}
}

func TestConfigRolePrivileges(t *testing.T) {
	ctx := testContext(t)
	conn := configConn(t, ctx)
	// What it may do: call the functions, write the configuration tables.
	for _, sql := range []string{
		`SELECT storage.save_config('k', '1')`,
		`INSERT INTO storage.config (key, value) VALUES ('k2', '2')`,
		`UPDATE storage.config SET value = '3' WHERE key = 'k2'`,
		`DELETE FROM storage.config WHERE key = 'k2'`,
		`INSERT INTO storage.servermap (server_map) VALUES ('{}')`,
		`SELECT * FROM storage.list_pg_instances()`,
	} {
		mustExec(t, ctx, conn, sql)
	}
	// What it may not: change the schema, rewrite servermap generations.
	for _, sql := range []string{
		`DROP TABLE storage.config`,
		`ALTER TABLE storage.config ADD COLUMN x int`,
		`ALTER TABLE storage.postgres_instance REPLICA IDENTITY DEFAULT`,
		`TRUNCATE storage.config`,
		`DROP FUNCTION storage.save_config(text, json)`,
		`CREATE TABLE storage.x (i int)`,
		`UPDATE storage.servermap SET server_map = '{}'`,
		`DELETE FROM storage.servermap`,
		`ALTER PUBLICATION bagger_lw_storage DROP TABLE storage.config`,
		`DROP SCHEMA storage CASCADE`,
		`SELECT * FROM lenkwerk.setting`,
	} {
		wantDenied(t, ctx, conn, sql)
	}
	// Nobody else may call the functions.
	if _, err := conn.Exec(ctx, "RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	if public := queryStrings(t, ctx, conn, `SELECT p.oid::regprocedure::text FROM pg_proc p
		WHERE pronamespace = 'storage'::regnamespace AND (proacl IS NULL OR array_to_string(proacl, ',') ~ '(^|,)=X')`); len(public) > 0 {
		t.Errorf("functions executable by PUBLIC: %q", public)
	}
	if !queryBool(t, ctx, conn, `SELECT bool_and(pg_get_userbyid(relowner) = 'lenkwerk_admin') FROM pg_class WHERE relnamespace = 'storage'::regnamespace`) {
		t.Error("not everything in schema storage is owned by lenkwerk_admin")
	}
}

// Roles are cluster-wide: a private cluster, so that changing them cannot
// disturb other tests (or other packages sharing an external server).
func TestRolesExistingAndConcurrent(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.StartCluster(t, pgtest.Options{})
	// Concurrent migrations of several databases all create the roles.
	urls := []string{c.NewDatabase(t), c.NewDatabase(t), c.NewDatabase(t)}
	var wg sync.WaitGroup
	errs := make([]error, len(urls))
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Slot names are cluster-wide too: one per database.
			errs[i] = migrations.Up(ctx, u, migrations.Options{Slot: fmt.Sprintf("concurrent_%d", i)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Up %d: %v", i, err)
		}
	}
	// An agent role that lost its attributes gets them back; existing roles
	// are no error.
	conn := connect(t, ctx, urls[0])
	mustExec(t, ctx, conn, `ALTER ROLE lenkwerk_agent NOLOGIN NOREPLICATION`)
	url := c.NewDatabase(t)
	if err := migrations.Up(ctx, url, migrations.Options{Slot: "second"}); err != nil {
		t.Fatalf("Up with existing roles: %v", err)
	}
	if !queryBool(t, ctx, conn, `SELECT rolcanlogin AND rolreplication FROM pg_roles WHERE rolname = 'lenkwerk_agent'`) {
		t.Fatal("lenkwerk_agent not LOGIN REPLICATION after Up")
	}
	// Down leaves the roles (documented), and they still serve the others.
	if err := migrations.Down(ctx, url, 0, migrations.Options{}); err != nil {
		t.Fatalf("Down: %v", err)
	}
	roles := queryStrings(t, ctx, conn, `SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'lenkwerk%' ORDER BY 1`)
	if strings.Join(roles, " ") != "lenkwerk_admin lenkwerk_agent lenkwerk_config" {
		t.Fatalf("roles after Down: %q", roles)
	}
}
