package etcdtest_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bagger/lenkwerk/integration/etcdtest"
)

func newClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRestartKeepsDataAndPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := etcdtest.New(t)
	c := newClient(t, s.Endpoint())
	put, err := c.Put(ctx, "/a", `"1"`)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The same client, unchanged, reconnects to the same port.
	got, err := c.Get(ctx, "/a")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != `"1"` {
		t.Fatalf("after restart Get /a = %v, want \"1\"", got.Kvs)
	}
	if got, want := got.Kvs[0].ModRevision, put.Header.Revision; got != want {
		t.Fatalf("ModRevision after restart = %d, want %d", got, want)
	}
	if got.Header.Revision < put.Header.Revision {
		t.Fatalf("store revision went back: %d < %d", got.Header.Revision, put.Header.Revision)
	}
}

func TestStartOutsideTests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := etcdtest.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := newClient(t, s.Endpoint()).Put(ctx, "/x", "{}"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestClusterSurvivesMemberStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := etcdtest.StartCluster(t, 3)
	c := newClient(t, cl.Endpoints()...)
	if _, err := c.Put(ctx, "/k", `1`); err != nil {
		t.Fatal(err)
	}
	lead := cl.Leader()
	if lead < 0 {
		t.Fatal("no leader")
	}
	stopped := cl.Members[lead]
	if err := stopped.Stop(); err != nil {
		t.Fatal(err)
	}
	// The two others elect a new leader and take writes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Put(pctx, "/k", `2`)
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write accepted with one member down: %v", err)
		}
	}
	if err := stopped.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The restarted member catches up: a serializable read on it alone
	// returns the write made while it was down.
	one := newClient(t, stopped.Endpoint())
	deadline = time.Now().Add(30 * time.Second)
	for {
		r, err := one.Get(ctx, "/k", clientv3.WithSerializable())
		if err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted member did not catch up: %v %v", r, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not a readiness wait
	}
}
