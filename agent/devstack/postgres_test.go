package devstack_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	if os.Getenv("PGTEST_LEAK_CLUSTER") == "1" {
		leakCluster()
	}
	pgtest.Main(m)
}

func TestNewDatabaseIsLogical(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	checkWalLevel(t, ctx, conn, "logical")
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
	checkWalLevel(t, ctx, conn, "replica")
}

// checkWalLevel fails the test unless conn's server runs with wal_level
// want.
func checkWalLevel(t *testing.T, ctx context.Context, conn *pgx.Conn, want string) {
	t.Helper()
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != want {
		t.Fatalf("wal_level = %q, want %s", level, want)
	}
}

func TestStartInDirKeepsData(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	// As root the server runs as postgres, which must enter the directory.
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(tmp, "pg")
	c, err := pgtest.Start(ctx, pgtest.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Destroy() })
	port := c.Port()
	conn, err := pgx.Connect(ctx, c.URL("postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (x int)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}

	// A second Start on the directory reuses the data and the port.
	c2, err := pgtest.Start(ctx, pgtest.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Destroy() })
	if got := c2.Port(); got != port {
		t.Fatalf("port after restart = %d, want %d", got, port)
	}
	conn, err = pgx.Connect(ctx, c2.URL("postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT * FROM kept"); err != nil {
		t.Fatalf("table lost across Stop and Start: %v", err)
	}
	if err := c2.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Destroy left %s: %v", dir, err)
	}
}

// A port taken between freePort and the server's bind (another test binary
// or etcd got it first) makes Start move to a new port, not fail.
func TestStartMovesOffATakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	first := true
	restore := devstack.SetFreePort(func() (int, error) {
		if first {
			first = false
			return taken, nil
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	})
	c := pgtest.StartCluster(t, pgtest.Options{})
	restore()
	if c.Port() == taken {
		t.Fatalf("cluster claims the taken port %d", taken)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.NewDatabase(t))
	if err != nil {
		t.Fatalf("connect on the new port %d: %v", c.Port(), err)
	}
	defer conn.Close(ctx)
	// The moved port survives a restart (it is what postgresql.conf says).
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, c.URL("postgres", ""))
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	conn2.Close(ctx)
}
