package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
)

// Tests against one default embedded server: what its limits accept and
// refuse, how a prefix maps onto etcd's key ranges, how an outage shows.

// openServer starts an embedded etcd server and opens the store on its URL
// with query appended; the store, the one-minute context and the server
// end with the test, in that order.
func openServer(t *testing.T, query string) (context.Context, *etcdtest.Server, *kvdriver.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	srv := etcdtest.New(t)
	s, err := kvdriver.Open(ctx, srv.URL()+query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return ctx, srv, s
}

// TestLimitsWorstCase writes the largest batch the limits allow, with the
// most per-operation overhead (128 operations, 1024-byte keys), to a
// default etcd server: the limits promise it is accepted.
func TestLimitsWorstCase(t *testing.T) {
	ctx, _, s := openServer(t, "")
	l := s.Limits()

	key := func(i int) string {
		k := fmt.Sprintf("/limits/%03d/", i)
		return k + strings.Repeat("k", l.MaxKeyBytes-len(k))
	}
	value := func(n int) []byte { return []byte(`"` + strings.Repeat("v", n-2) + `"`) }

	ops := make([]kvdriver.Op, l.MaxBatchOps)
	per := (l.MaxBatchBytes - l.MaxBatchOps*l.MaxKeyBytes) / l.MaxBatchOps
	total := 0
	for i := range ops {
		n := per
		if i == len(ops)-1 {
			n = l.MaxBatchBytes - total - l.MaxKeyBytes
		}
		ops[i] = kvdriver.Put(key(i), value(n))
		total += l.MaxKeyBytes + n
	}
	if total != l.MaxBatchBytes {
		t.Fatalf("test batch is %d bytes, want %d", total, l.MaxBatchBytes)
	}
	if _, err := s.Apply(ctx, ops); err != nil {
		t.Fatalf("Apply of a batch at every limit: %v", err)
	}
	if _, err := s.Put(ctx, key(999), value(l.MaxValueBytes)); err != nil {
		t.Fatalf("Put of the longest key with the largest value: %v", err)
	}
}

// TestServerTooLarge: a server with lower limits than etcd's defaults
// refuses what the driver's validation lets through; the error still
// wraps ErrTooLarge.
func TestServerTooLarge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdtest.StartServer(ctx, etcdtest.Options{Dir: t.TempDir(), UnsafeNoFsync: true, MaxRequestBytes: 64 << 10, MaxTxnOps: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s, err := kvdriver.Open(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Put(ctx, "/big", []byte(`"`+strings.Repeat("x", 100<<10)+`"`))
	if !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("Put larger than the server's max-request-bytes = %v, want ErrTooLarge", err)
	}
	var ops []kvdriver.Op
	for i := range 5 {
		ops = append(ops, kvdriver.Put(fmt.Sprintf("/op/%d", i), []byte(`1`)))
	}
	_, err = s.Apply(ctx, ops)
	if !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("Apply of more ops than the server's max-txn-ops = %v, want ErrTooLarge", err)
	}
}

// TestPrefixRangeEdges: the watch reads the etcd range ["/p/Index",
// "/p/Index0"), which also holds keys such as "/p/Index-x" and
// "/p/Index.y" (bytes below '0'); they must be filtered out, in List and
// Watch alike.
func TestPrefixRangeEdges(t *testing.T) {
	ctx, _, s := openServer(t, "")
	start, err := s.Put(ctx, "/p/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Watch(ctx, "/p/Index", start)
	var last int64
	for _, k := range []string{"/p/Index-x", "/p/Index.y", "/p/Index/1", "/p/Index", "/p/IndexField", "/p/Index0", "/p/Index/2/3"} {
		if last, err = s.Put(ctx, k, []byte(`1`)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"/p/Index/1", "/p/Index", "/p/Index/2/3"}
	var got []string
	for rev := int64(0); rev < last; {
		select {
		case r := <-ch:
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			for _, e := range r.Events {
				got = append(got, e.Key)
			}
			rev = r.Revision
		case <-ctx.Done():
			t.Fatalf("watch saw %q, want %q", got, want)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("watch saw %q, want %q", got, want)
	}
	kvs, _, err := s.List(ctx, "/p/Index")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	if want := []string{"/p/Index", "/p/Index/1", "/p/Index/2/3"}; !slices.Equal(keys, want) {
		t.Errorf("List = %q, want %q", keys, want)
	}
}

// TestWatchFromNowServerDown: with the server down, Watch from the current
// revision cannot fix "now"; it reports that promptly instead of guessing.
func TestWatchFromNowServerDown(t *testing.T) {
	ctx, srv, s := openServer(t, "?request-timeout=500ms")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	kvtest.CheckWatchFromNowDown(t, ctx, s)
}
