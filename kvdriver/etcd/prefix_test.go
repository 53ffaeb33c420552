package etcd_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestPrefixRangeEdges: the watch reads the etcd range ["/p/Index",
// "/p/Index0"), which also holds keys such as "/p/Index-x" and
// "/p/Index.y" (bytes below '0'); they must be filtered out, in List and
// Watch alike.
func TestPrefixRangeEdges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := etcdtest.New(t)
	s, err := kvdriver.Open(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := etcdtest.New(t)
	s, err := kvdriver.Open(ctx, srv.URL()+"?request-timeout=500ms")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, ok := <-s.Watch(ctx, "/down", 0)
	if !ok || r.Err == nil {
		t.Fatalf("Watch from now with the server down: %v, %v; want an error response", r, ok)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Watch took %v to report the outage", d)
	}
	t.Logf("Watch from now, server down: %v", r.Err)
}
