package devstack_test

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

// TestTLSAndHBA starts a cluster that requires TLS and client certificates
// over TCP: plaintext is refused, verify-full with a client certificate
// whose CN is the role gets in, a password role gets in with scram over
// TLS only, and NewDatabase still works (pgtest uses the socket).
func TestTLSAndHBA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, err := certs.NewCA(t.TempDir(), "pgtest CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("server", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Client("postgres")
	if err != nil {
		t.Fatal(err)
	}
	c := pgtest.StartCluster(t, pgtest.Options{
		TLS: &pgtest.TLS{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: ca.CertFile},
		HBA: []string{
			"hostnossl all all 0.0.0.0/0 reject",
			"hostssl all pw_user 127.0.0.1/32 scram-sha-256",
			"hostssl all all 127.0.0.1/32 cert",
		},
	})
	db := c.NewDatabase(t) // through the socket despite the rules
	name := strings.TrimPrefix(mustParse(t, db).Path, "/")

	tlsURL := func(user string, params ...string) string {
		q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {ca.CertFile}}
		for i := 0; i+1 < len(params); i += 2 {
			q.Set(params[i], params[i+1])
		}
		u := url.URL{Scheme: "postgres", User: url.User(user), Host: "localhost:" + strconv.Itoa(c.Port()), Path: "/" + name, RawQuery: q.Encode()}
		return u.String()
	}
	conn, err := pgx.Connect(ctx, tlsURL("postgres", "sslcert", cli.CertFile, "sslkey", cli.KeyFile))
	if err != nil {
		t.Fatalf("verify-full with client certificate: %v", err)
	}
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("pg_stat_ssl.ssl = %v, %v; want true", ssl, err)
	}
	if _, err := conn.Exec(ctx, "CREATE ROLE pw_user LOGIN PASSWORD 'pw-s3cret'"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	if _, err := pgx.Connect(ctx, db); err == nil {
		t.Fatal("plaintext connection accepted")
	} else if !strings.Contains(err.Error(), "no encryption") && !strings.Contains(err.Error(), "pg_hba.conf") {
		t.Errorf("plaintext refused with %v, want a pg_hba.conf rejection", err)
	}
	if _, err := pgx.Connect(ctx, tlsURL("postgres")); err == nil {
		t.Fatal("TLS connection without a client certificate accepted for cert auth")
	}
	if conn, err := pgx.Connect(ctx, tlsURL("pw_user", "password", "pw-s3cret")); err != nil {
		t.Fatalf("scram over TLS: %v", err)
	} else {
		conn.Close(ctx)
	}
	if _, err := pgx.Connect(ctx, tlsURL("pw_user", "password", "wrong")); err == nil {
		t.Fatal("wrong password accepted")
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// leakCluster is the child of TestReapStale: it starts a cluster and
// exits without cleaning up, as a killed test binary does.
func leakCluster() {
	c, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("dir", filepath.Dir(c.DataDir()))
	os.Exit(0)
}

// TestReapStale leaks a running cluster from a child process that exits
// without cleanup, then checks reaping stops and removes it while leaving
// this process's own (live-owned) cluster alone.
func TestReapStale(t *testing.T) {
	own := pgtest.StartCluster(t, pgtest.Options{})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PGTEST_LEAK_CLUSTER=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var dir string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "dir "); ok {
			dir = d
		}
	}
	if dir == "" {
		t.Fatalf("child printed no cluster dir:\n%s", out)
	}
	pidLine, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("leaked cluster is not running: %v", err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(pidLine), "\n", 2)[0])
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("leaked postmaster %d is not running", pid)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGQUIT); os.RemoveAll(dir) })

	devstack.ReapStale(own.BinDir())

	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("stale cluster dir %s still there: %v", dir, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("stale postmaster %d still runs", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, own.URL("postgres", ""))
	if err != nil {
		t.Fatalf("own cluster reaped: %v", err)
	}
	conn.Close(ctx)
}
