package etcd_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// TestClusterMemberLoss kills the raft leader of a 3-member cluster under
// a writer and two watchers (one on every member, one on a single
// follower); writes must resume within a few seconds. Then it kills the
// two members other than the follower, so the follower loses its leader
// and cancels the watch on it, and brings them back. Each watcher must see
// exactly the history etcd recorded: nothing lost, nothing repeated, in
// order.
func TestClusterMemberLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl := etcdtest.StartCluster(t, 3)
	open := func(u string) *kvdriver.Store {
		s, err := kvdriver.Open(ctx, u+"?request-timeout=2s")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	writer := open(cl.URL())
	leader := cl.Leader()
	if leader < 0 {
		t.Fatal("no leader")
	}
	follower := cl.Members[(leader+1)%3]
	watchers := map[string]*kvdriver.Store{
		"all members":                 open(cl.URL()),
		"follower " + follower.Name(): open(follower.URL()),
	}

	startRev, err := writer.Put(ctx, "/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		events []kvdriver.Event
		err    error
	}
	var upTo atomic.Int64 // the last revision written; watchers stop there
	upTo.Store(1 << 62)
	results := map[string]chan result{}
	for name, s := range watchers {
		ch := s.Watch(ctx, "/w", startRev)
		res := make(chan result, 1)
		results[name] = res
		go func() {
			var r result
			for resp := range ch {
				if resp.Err != nil {
					r.err = resp.Err
					break
				}
				r.events = append(r.events, resp.Events...)
				if resp.Revision >= upTo.Load() {
					break
				}
			}
			res <- r
		}()
	}

	// The writer puts /w/<i> = i, retrying an i until a put succeeds.
	var (
		mu        sync.Mutex
		successes []time.Time
	)
	stopWriting := make(chan struct{})
	writerDone := make(chan int64)
	go func() {
		var last int64
		for i := 0; ; {
			select {
			case <-stopWriting:
				writerDone <- last
				return
			default:
			}
			rev, err := writer.Put(ctx, fmt.Sprintf("/w/%04d", i), []byte(strconv.Itoa(i)))
			if err != nil {
				continue // the request timeout paces the retries
			}
			last = rev
			mu.Lock()
			successes = append(successes, time.Now())
			mu.Unlock()
			i++
		}
	}()
	written := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(successes)
	}
	waitWritten := func(n int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for written() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d writes succeeded, want %d within %v", written(), n, within)
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}
	waitWritten(50, 20*time.Second)

	killed := cl.Members[leader]
	before := written()
	if err := killed.Kill(); err != nil {
		t.Fatal(err)
	}
	waitWritten(before+50, 30*time.Second)
	// The longest pause between two successful writes around the kill is
	// the outage the writer saw.
	mu.Lock()
	var gap time.Duration
	for i := before; i < len(successes); i++ {
		gap = max(gap, successes[i].Sub(successes[i-1]))
	}
	mu.Unlock()
	t.Logf("leader %s killed; longest pause between writes %v", killed.Name(), gap.Round(time.Millisecond))
	if gap > 5*time.Second {
		t.Errorf("writes paused for %v after the leader was killed, want at most a few seconds", gap)
	}

	if err := killed.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitWritten(written()+20, 30*time.Second)

	// Quorum loss: with the two other members down the follower has no
	// leader, cancels the watch on it (WithRequireLeader), and the store
	// must re-establish it once the cluster is back.
	followerStore := watchers["follower "+follower.Name()]
	restarts := etcd.WatchRestarts(followerStore)
	restore := isolate(ctx, t, cl, follower)
	deadline := time.Now().Add(30 * time.Second)
	for etcd.WatchRestarts(followerStore) == restarts {
		if time.Now().After(deadline) {
			t.Fatalf("watch on %s was not re-established after it lost its leader", follower.Name())
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	restore()
	waitWritten(written()+20, 30*time.Second)
	close(stopWriting)
	lastRev := <-writerDone
	upTo.Store(lastRev)
	// A watcher already past lastRev is blocked on its channel; one more
	// write wakes it up.
	if _, err := writer.Put(ctx, "/w/end", []byte(`"end"`)); err != nil {
		t.Fatal(err)
	}

	want := referenceHistory(ctx, t, cl.Endpoints(), "/w/", startRev+1, lastRev)
	if len(want) < written() {
		t.Fatalf("etcd history has %d events, fewer than the %d successful writes", len(want), written())
	}
	for name, res := range results {
		var r result
		select {
		case r = <-res:
		case <-ctx.Done():
			t.Fatalf("watcher %s: did not reach revision %d", name, lastRev)
		}
		if r.err != nil {
			t.Fatalf("watcher %s ended: %v", name, r.err)
		}
		t.Logf("watcher %s: re-established its etcd watch %d times", name, etcd.WatchRestarts(watchers[name]))
		got := r.events
		for len(got) > 0 && got[len(got)-1].Revision > lastRev {
			got = got[:len(got)-1]
		}
		if len(got) != len(want) {
			t.Errorf("watcher %s: %d events, etcd history has %d", name, len(got), len(want))
		}
		for i := range min(len(got), len(want)) {
			g, w := got[i], want[i]
			if g.Type != w.Type || g.Key != w.Key || g.Revision != w.Revision || string(g.Value) != string(w.Value) {
				t.Errorf("watcher %s: event %d = %v %s@%d, etcd has %v %s@%d", name, i, g.Type, g.Key, g.Revision, w.Type, w.Key, w.Revision)
				break
			}
		}
	}
}

// referenceHistory reads etcd's own record of the events on prefix in
// [from, to] with a plain clientv3 watch once the cluster is healthy.
func referenceHistory(ctx context.Context, t *testing.T, endpoints []string, prefix string, from, to int64) []kvdriver.Event {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var evs []kvdriver.Event
	for wr := range c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			t.Fatalf("reference watch: %v", err)
		}
		for _, ev := range wr.Events {
			if ev.Kv.ModRevision > to {
				return evs
			}
			typ := kvdriver.OpPut
			if ev.Type == clientv3.EventTypeDelete {
				typ = kvdriver.OpDelete
			}
			evs = append(evs, kvdriver.Event{Type: typ, Key: string(ev.Kv.Key), Value: ev.Kv.Value, Revision: ev.Kv.ModRevision})
			if ev.Kv.ModRevision == to {
				return evs
			}
		}
	}
	t.Fatalf("reference watch ended before revision %d", to)
	return nil
}

// isolate kills every member of cl but keep at once, so that keep loses
// its leader; restore starts them again, at once.
func isolate(ctx context.Context, t *testing.T, cl *etcdtest.Cluster, keep *etcdtest.Server) (restore func()) {
	t.Helper()
	var others []*etcdtest.Server
	for _, m := range cl.Members {
		if m != keep {
			others = append(others, m)
		}
	}
	each := func(do func(m *etcdtest.Server) error) {
		var wg sync.WaitGroup
		for _, m := range others {
			wg.Go(func() {
				if err := do(m); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	each(func(m *etcdtest.Server) error { return m.Kill() })
	return func() { each(func(m *etcdtest.Server) error { return m.Start(ctx) }) }
}
