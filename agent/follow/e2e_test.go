package follow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// The whole loop: Lenkwerk database → agent → store → follow → local copy,
// which ends equal to the database (the servermap: its newest generation).
// The prefix is given with a trailing '/', as operators type it: agent,
// follow and converge take it for "/bagger".
func TestEndToEnd(t *testing.T) {
	e := newEnv(t, "mem://follow-e2e-"+fmt.Sprint(time.Now().UnixNano()), follow.Config{Prefix: "/bagger/"})
	ctx := e.ctx
	src := pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, src, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	srcConn, err := pgx.Connect(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	defer srcConn.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := srcConn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.register_pg_instance('db2', 5432, 'bagger');
		SELECT storage.save_config('kvstore_type', '"etcd"'); SELECT storage.save_servermap('{"nodes": [1]}');
		SELECT storage.append_dimension('day', NULL, NULL, NULL)`)

	a, err := agent.New(agent.Config{DatabaseURL: src, Store: e.store, Prefix: "/bagger/", Logger: e.cfg.Logger.With("who", "agent"),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	defer func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	e.start()

	check := func(step string) {
		t.Helper()
		if diff, err := converge.Wait(ctx, converge.URL(src), e.store, converge.Options{Prefix: "/bagger/"}, 30*time.Second); err != nil {
			t.Fatalf("%s: agent did not converge: %v\n%s", step, err, diff)
		}
		e.caughtUp()
		e.equal()
		compareTables(t, ctx, srcConn, e.conn(), step)
	}
	check("initial sync")
	for _, step := range []string{
		`SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db2'), 1)`,
		`SELECT storage.register_pg_instance('rack/7', 6432, 'schaufel')`,
		`SELECT storage.append_dimension('customer', 'unknown', NULL, NULL), storage.insert_dimension(0, 'region', NULL, '2020-01-01', NULL)`,
		`SELECT storage.save_index('bagger_idx', 'gin', NULL, NULL, NULL);
		 SELECT storage.append_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 'payload', NULL, NULL);
		 SELECT storage.insert_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 0, 'ts', NULL, NULL)`,
		`SELECT storage.expire_index_field((SELECT id FROM storage.index_field WHERE expression = 'payload'), '2031-02-03 04:05:06.789')`,
		`SELECT storage.save_index('bagger_idx', 'btree', NULL, '2040-01-01', NULL)`,
		`SELECT storage.save_servermap('{"nodes": [1, 2]}')`,
		`SELECT storage.save_servermap('null'), storage.save_config('nothing', 'null')`,
		`UPDATE storage.config SET key = 'kv/moved' WHERE key = 'kvstore_type'`,
		`UPDATE storage.postgres_instance SET port = 6543 WHERE host = 'db2'`,
		`BEGIN; SELECT storage.save_config('retention', '"30d"'); DELETE FROM storage.dimension WHERE fieldname = 'day'; COMMIT`,
		`SELECT storage.save_config('retention', 'null')`,
		`DELETE FROM storage.servermap WHERE id = (SELECT max(id) FROM storage.servermap)`,
		`BEGIN; DELETE FROM storage.index_field; DELETE FROM storage.index; COMMIT`,
	} {
		exec(step)
		check(step)
	}
	if s := e.f.Status(); s.Skipped != 0 {
		t.Fatalf("skipped %d changes; logs:\n%s", s.Skipped, e.logs)
	}
}

// compareTables compares every table of the copy with the source, as
// to_jsonb; of the servermap only the newest generation is in the copy.
func compareTables(t *testing.T, ctx context.Context, src, local *pgx.Conn, step string) {
	t.Helper()
	for _, table := range []string{"config", "postgres_instance", "dimension", "index", "index_field", "servermap"} {
		q := "SELECT to_jsonb(t.*)::text FROM ONLY storage." + table + " t"
		srcQ := q
		if table == "servermap" {
			srcQ += " ORDER BY id DESC LIMIT 1"
		}
		want, got := tableRows(t, ctx, src, srcQ), tableRows(t, ctx, local, q)
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Fatalf("after %s: storage.%s differs:\nsource %v\ncopy   %v", step, table, want, got)
		}
	}
}

func tableRows(t *testing.T, ctx context.Context, conn *pgx.Conn, q string) []string {
	t.Helper()
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		var x any
		if err := json.Unmarshal([]byte(v), &x); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(x)
		vals[i] = string(b)
	}
	sort.Strings(vals)
	return vals
}
