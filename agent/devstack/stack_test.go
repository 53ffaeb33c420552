package devstack_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// stackDir is a directory the server can enter also as user postgres.
func stackDir(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return tmp
}

// A kept stack comes back with its database and provisioning: Start finds
// the database there and Provision runs again on it.
func TestStackKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := stackDir(t)
	var provisioned []int // rows of table runs seen by each Provision
	opts := devstack.StackOptions{
		Postgres: devstack.Options{Dir: filepath.Join(dir, "postgres")},
		Keep:     true,
		Database: "lw",
		Provision: func(ctx context.Context, pg *devstack.Cluster) error {
			conn, err := pgx.Connect(ctx, pg.URL("lw", ""))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			var n int
			_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS runs (at timestamptz); INSERT INTO runs VALUES (now())")
			if err == nil {
				err = conn.QueryRow(ctx, "SELECT count(*) FROM runs").Scan(&n)
			}
			provisioned = append(provisioned, n)
			return err
		},
		EtcdMembers: 1,
		Etcd:        devstack.EtcdOptions{Dir: filepath.Join(dir, "etcd"), UnsafeNoFsync: true},
	}
	for run := 1; run <= 2; run++ {
		s, err := devstack.StartStack(ctx, opts)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if got, want := s.DatabaseURL("lenkwerk_agent"), s.Postgres.URL("lw", "lenkwerk_agent"); got != want {
			t.Errorf("DatabaseURL = %s, want %s", got, want)
		}
		if !strings.HasPrefix(s.EtcdURL(), "etcd://127.0.0.1:") {
			t.Errorf("EtcdURL = %q", s.EtcdURL())
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: s.Etcd.Endpoints(), DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cli.Put(ctx, "/run", "x")
		cli.Close()
		if err != nil {
			t.Fatalf("run %d: etcd put: %v", run, err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("run %d: close: %v", run, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "postgres", "data", "PG_VERSION")); err != nil {
			t.Fatalf("run %d: Close with Keep removed the data: %v", run, err)
		}
	}
	if got, want := provisioned, []int{1, 2}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Provision saw %v rows, want %v (the database kept across runs)", got, want)
	}
	// Removed at last (Keep leaves the files).
	c, err := devstack.Start(ctx, opts.Postgres)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
}

// A start that fails halfway stops and removes what it started.
func TestStackFailedStartCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := stackDir(t)
	pgDir := filepath.Join(dir, "postgres")
	refused := errors.New("refused")
	// etcd cannot make its directory under a file.
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opts devstack.StackOptions
		want string
	}{
		{"provision", devstack.StackOptions{
			Database:  "lw",
			Provision: func(context.Context, *devstack.Cluster) error { return refused },
		}, "refused"},
		{"etcd", devstack.StackOptions{Database: "lw", EtcdMembers: 1, Etcd: devstack.EtcdOptions{Dir: filepath.Join(notDir, "etcd")}}, "start etcd: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Postgres.Dir = pgDir
			s, err := devstack.StartStack(ctx, c.opts)
			if err == nil {
				s.Close()
				t.Fatal("StartStack succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("StartStack: %v, want %q in it", err, c.want)
			}
			if _, err := os.Stat(pgDir); !os.IsNotExist(err) {
				t.Fatalf("the failed start left %s: %v", pgDir, err)
			}
		})
	}
}
