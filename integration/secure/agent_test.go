package secure

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// testLogger sends the agent's logs to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestAgentTLSBothSides runs the agent as lenkwerk_agent with a client
// certificate over verify-full (its replication and query connections;
// pg_hba allows nothing else over TCP) into etcd over mTLS, logged in as
// a user whose role covers only the prefix; the store converges with the
// database, through the initial copy and streamed changes.
func TestAgentTLSBothSides(t *testing.T) {
	ctx := testContext(t, 80*time.Second)
	p := newPKI(t)
	pg := startPG(t, p)
	etcd := startEtcd(t, p)

	admin := pg.url("postgres", p.postgres)
	db, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO storage.config (key, value) VALUES ('before', '"copied"')`)
	exec(`INSERT INTO storage.dimension (id, ordinality, fieldname) VALUES (1, 0, 'host')`)

	store, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAgent, etcdUser, agentPass))
	if err != nil {
		t.Fatalf("open etcd as %s: %v", etcdUser, err)
	}
	defer store.Close()
	a, err := agent.New(agent.Config{
		DatabaseURL:    pg.url(agentRole, p.agent),
		Store:          store,
		Prefix:         prefix,
		Logger:         testLogger(t),
		StatusInterval: 200 * time.Millisecond,
		PollInterval:   300 * time.Millisecond,
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Go(t, ctx, "agent Run", a.Run)

	// The checker reads etcd as root: it sees whatever the agent wrote.
	rootStore, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAdmin, "root", rootPass))
	if err != nil {
		t.Fatal(err)
	}
	defer rootStore.Close()
	opts := converge.Options{Prefix: prefix}
	if _, err := converge.Wait(ctx, db, rootStore, opts, 40*time.Second); err != nil {
		t.Fatalf("initial copy: %v (agent status %+v)", err, a.Status())
	}
	exec(`INSERT INTO storage.config (key, value) VALUES ('after', '{"streamed": true}')`)
	exec(`UPDATE storage.config SET value = '"changed"' WHERE key = 'before'`)
	exec(`DELETE FROM storage.dimension WHERE id = 1`)
	if _, err := converge.Wait(ctx, db, rootStore, opts, 30*time.Second); err != nil {
		t.Fatalf("streamed changes: %v (agent status %+v)", err, a.Status())
	}
	kv, err := rootStore.Get(ctx, prefix+"/Config/after")
	if err != nil || !strings.Contains(string(kv.Value), "streamed") {
		t.Fatalf("Get %s/Config/after = %s, %v", prefix, kv.Value, err)
	}

	// A storage node: lenkwerk follow keeps a local copy from the store, its
	// database over verify-full, etcd over mTLS as a read-only user.
	copyName := pg.newDatabase(t, migrations.Options{Copy: true})
	nodeStore, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAdmin, nodeUser, nodePass))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeStore.Close()
	if _, err := nodeStore.Put(ctx, prefix+"/Config/node", []byte(`1`)); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("read-only node user Put: %v, want permission denied", err)
	}
	f, err := follow.New(follow.Config{
		DatabaseURL: pg.urlFor(copyName, "postgres", p.postgres),
		Store:       nodeStore,
		StoreName:   "etcd-secure",
		Prefix:      prefix,
		Logger:      testLogger(t),
		MinBackoff:  50 * time.Millisecond,
		MaxBackoff:  time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer testutil.Go(t, ctx, "follow Run", f.Run)()
	copyDB, err := pgx.Connect(ctx, pg.urlFor(copyName, "postgres", p.postgres))
	if err != nil {
		t.Fatal(err)
	}
	defer copyDB.Close(context.Background())
	for deadline := time.Now().Add(30 * time.Second); ; {
		var v string
		err := copyDB.QueryRow(ctx, `SELECT value::text FROM storage.config WHERE key = 'after'`).Scan(&v)
		if err == nil && strings.Contains(v, "streamed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy has no row 'after' within 30s: %q, %v", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Every connection of the agent used TLS with its certificate.
	rows, err := db.Query(ctx, `SELECT a.backend_type, s.ssl, coalesce(s.client_dn, '') FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1`, agentRole)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var typ, dn string
		var ssl bool
		if err := rows.Scan(&typ, &ssl, &dn); err != nil {
			t.Fatal(err)
		}
		n++
		if !ssl || !strings.Contains(dn, "CN="+agentRole) {
			t.Errorf("agent connection (%s): ssl=%v client_dn=%q, want TLS with CN=%s", typ, ssl, dn, agentRole)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("no connection of the agent found")
	}
	var walsenders int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.usename = $1 AND s.ssl`, agentRole).Scan(&walsenders); err != nil {
		t.Fatal(err)
	}
	if walsenders != 1 {
		t.Errorf("%d TLS replication connections of %s, want 1", walsenders, agentRole)
	}
}
