package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// The built binary on a storage node's ordinary server (wal_level=replica):
// it provisions the copy, loads and follows etcd, and exits 0 on SIGTERM.
func TestFollowBinary(t *testing.T) {
	bin := lenkwerkBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	etcd := etcdtest.New(t)
	store, err := kvdriver.Open(ctx, etcd.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Put(ctx, "/bagger/Config/kvstore_type", []byte(`{"id": 1, "key": "kvstore_type", "value": "etcd"}`)); err != nil {
		t.Fatal(err)
	}
	c := pgtest.StartCluster(t, pgtest.Options{WalLevel: "replica"})
	local := c.NewDatabase(t)

	cmd := exec.Command(bin, "follow", "--kv", etcd.URL(), "--prefix", "/bagger")
	cmd.Env = append(os.Environ(), "LENKWERK_FOLLOW_DATABASE_URL="+local)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	conn := connectLocal(t, ctx, local)
	waitRow := func(key string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var n int
			err := conn.QueryRow(ctx, `SELECT count(*) FROM storage.config WHERE key = $1`, key).Scan(&n)
			if err == nil && n == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("config %q never reached the local copy (%v); output:\n%s", key, err, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitRow("kvstore_type")
	if _, err := store.Put(ctx, "/bagger/Config/later", []byte(`{"id": 2, "key": "later", "value": [1]}`)); err != nil {
		t.Fatal(err)
	}
	waitRow("later")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow exited with %v after SIGTERM; output:\n%s", err, out.String())
		}
	case <-ctx.Done():
		t.Fatalf("follow did not exit after SIGTERM; output:\n%s", out.String())
	}
	if s := out.String(); !strings.Contains(s, "lenkwerk follow stopped") {
		t.Fatalf("output:\n%s", s)
	}

	// Without a database: a usage error, exit 1.
	cmd = exec.CommandContext(ctx, bin, "follow")
	cmd.Env = append(os.Environ(), "LENKWERK_FOLLOW_DATABASE_URL=")
	b, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(b), "LENKWERK_FOLLOW_DATABASE_URL) is required") {
		t.Fatalf("follow without a database: %v\n%s", err, b)
	}
}

// connectLocal connects to url for the rest of the test: the local copy
// (its tables appear once the follower has migrated it) or a migrated
// Lenkwerk database.
func connectLocal(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
