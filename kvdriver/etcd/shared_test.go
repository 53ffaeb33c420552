package etcd_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// fanout is n Stores of one process, each watching /f from now, and the
// highest revision each has received.
type fanout struct {
	stores []*kvdriver.Store
	seen   []atomic.Int64
	errs   chan error
	// first is the first watcher waitAll waits for; those before it are
	// closed.
	first int
}

func startFanout(ctx context.Context, t *testing.T, url string, n int) *fanout {
	t.Helper()
	f := &fanout{seen: make([]atomic.Int64, n), errs: make(chan error, n)}
	for range n {
		s, err := kvdriver.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		f.stores = append(f.stores, s)
	}
	for i, s := range f.stores {
		ch := s.Watch(ctx, "/f", 0)
		go func() {
			for resp := range ch {
				if resp.Err != nil {
					f.errs <- fmt.Errorf("watcher %d: %w", i, resp.Err)
					return
				}
				f.seen[i].Store(resp.Revision)
			}
		}()
	}
	return f
}

// waitAll waits until every watcher has received rev, failing on a watch
// error or after within.
func (f *fanout) waitAll(t *testing.T, rev int64, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for i := f.first; i < len(f.seen); i++ {
		for f.seen[i].Load() < rev {
			select {
			case err := <-f.errs:
				t.Fatalf("%s: %v", what, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: watcher %d has revision %d, not %d within %v", what, i, f.seen[i].Load(), rev, within)
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}
}

// TestSharedClient opens many Stores on one cluster: they share a single
// clientv3 client (one connection, one watch stream), every watch gets
// every write, and the client is closed with the last Store only.
func TestSharedClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := etcdtest.New(t)
	before := etcd.SharedClients()
	const n = 100
	f := startFanout(ctx, t, srv.URL(), n)
	if got := etcd.SharedClients() - before; got != 1 {
		t.Fatalf("%d Stores on one cluster made %d clients, want 1", n, got)
	}
	for _, s := range f.stores[1:] {
		if etcdClient(t, s) != etcdClient(t, f.stores[0]) {
			t.Fatal("two Stores on the same cluster have different clients")
		}
	}
	// Different credentials must not share: a Store opened with a user
	// (refused, as the server has no auth) makes and drops its own client.
	if s, err := kvdriver.Open(ctx, srv.URL()+"?username=nobody&dial-timeout=2s"); err == nil {
		s.Close()
	}
	if got := etcd.SharedClients() - before; got != 1 {
		t.Fatalf("after a Store with other credentials: %d clients, want 1", got)
	}

	rev, err := f.stores[0].Put(ctx, "/f/a", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	f.waitAll(t, rev, 10*time.Second, "first write")

	// Closing all but one Store leaves the last one working, watch and all.
	for _, s := range f.stores[:n-1] {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	last := f.stores[n-1]
	if got := etcd.SharedClients() - before; got != 1 {
		t.Fatalf("with one Store left: %d clients, want 1", got)
	}
	if _, err := f.stores[0].Put(ctx, "/f/b", []byte(`2`)); err == nil {
		t.Fatal("Put on a closed Store succeeded")
	}
	rev, err = last.Put(ctx, "/f/b", []byte(`2`))
	if err != nil {
		t.Fatalf("the last Store after the others closed: %v", err)
	}
	f.first = n - 1
	f.waitAll(t, rev, 10*time.Second, "write after the others closed")
	if err := last.Close(); err != nil {
		t.Fatal(err)
	}
	if got := etcd.SharedClients() - before; got != 0 {
		t.Fatalf("after the last Close: %d clients, want 0", got)
	}
}

// TestSharedWatchPartitionedMember runs 20 watchers sharing one client
// through a 3-member cluster. First each member in turn is killed (one of
// them carries the shared watch stream): the watches move to a live member
// and keep delivering. Then 20 watchers connected to a single follower
// see it lose quorum (the two others killed, as in a partition): etcd
// cancels their watches for want of a leader (WithRequireLeader) instead of
// leaving them silent, each watch notices and retries, and all deliver
// again once the cluster is whole. No watch ends with an error.
func TestSharedWatchPartitionedMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cl := etcdtest.StartCluster(t, 3)
	const n = 20
	all := startFanout(ctx, t, cl.URL()+"?request-timeout=2s", n)
	writer := all.stores[0]
	put := func(what string) int64 {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			rev, err := writer.Put(ctx, "/f/x", []byte(`"`+what+`"`))
			if err == nil {
				return rev
			}
			if time.Now().After(deadline) {
				t.Fatalf("put (%s): %v", what, err)
			}
			// The request timeout paces the retries.
		}
	}
	all.waitAll(t, put("start"), 10*time.Second, "start")

	for _, m := range cl.Members {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		all.waitAll(t, put(m.Name()+" down"), 20*time.Second, m.Name()+" killed")
		t.Logf("%s killed: all %d watchers got the next write after %v", m.Name(), n, time.Since(start).Round(time.Millisecond))
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		all.waitAll(t, put(m.Name()+" back"), 20*time.Second, m.Name()+" restarted")
	}

	leader := cl.Leader()
	if leader < 0 {
		t.Fatal("no leader")
	}
	follower := cl.Members[(leader+1)%3]
	lone := startFanout(ctx, t, follower.URL()+"?request-timeout=2s", n)
	lone.waitAll(t, put("follower watchers started"), 10*time.Second, "follower watchers")
	restarts := make([]int64, n)
	for i, s := range lone.stores {
		restarts[i] = etcd.WatchRestarts(s)
	}
	restore := isolate(ctx, t, cl, follower)
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for i, s := range lone.stores {
		for etcd.WatchRestarts(s) == restarts[i] {
			select {
			case err := <-lone.errs:
				t.Fatalf("during quorum loss: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("watcher %d on %s did not notice that it lost its leader within 30s", i, follower.Name())
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}
	t.Logf("%s lost quorum: all %d watchers on it noticed after %v", follower.Name(), n, time.Since(start).Round(time.Millisecond))
	restore()
	rev := put("whole again")
	lone.waitAll(t, rev, 30*time.Second, "after quorum returned")
	all.waitAll(t, rev, 30*time.Second, "after quorum returned")
}

// etcdClient is the etcd client of an etcd store.
func etcdClient(t *testing.T, s *kvdriver.Store) any {
	t.Helper()
	var d *etcd.Driver
	if !s.As(&d) {
		t.Fatalf("store %v is not an etcd store", s)
	}
	return d.Client()
}
