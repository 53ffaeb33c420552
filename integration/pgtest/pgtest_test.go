package pgtest_test

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestNewDatabaseIsLogical(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %q, want logical", level)
	}
	// A slot in the database must not stop its cleanup.
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot('pgtest_slot', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
}

func TestPrivateClusterRestart(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	url := c.NewDatabase(t)
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "replica" {
		t.Fatalf("wal_level = %q, want replica", level)
	}
}
