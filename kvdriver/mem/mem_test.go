package mem_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// harness opens every store on one named in-process store, like
// connections to one server.
type harness struct{ name string }

func (h *harness) MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error) {
	return kvdriver.Open(ctx, "mem://"+h.name)
}

func (h *harness) Close() {}

func TestConformance(t *testing.T) {
	kvtest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kvtest.Harness, error) {
		return &harness{name: "conformance-" + t.Name()}, nil
	})
}

func open(t *testing.T, rawURL string) *kvdriver.Store {
	t.Helper()
	s, err := kvdriver.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("Open(%q): %v", rawURL, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL's user info
// or a password= parameter never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	kvtest.FuzzURLParser(f, "mem", func(raw string) error {
		u, err := url.Parse(raw)
		if err != nil {
			return nil // kvdriver.Open fails before mem sees it
		}
		_, err = mem.ParseURL(u)
		return err
	})
}

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		url  string
		want mem.Config
	}{
		{"mem://", mem.Config{}},
		{"mem://dev", mem.Config{Name: "dev"}},
		{"mem://dev/", mem.Config{Name: "dev"}},
		{"mem://?history=5", mem.Config{History: 5}},
		{"mem://x?max-batch-ops=7&max-batch-bytes=100&max-value-bytes=50&max-key-bytes=64", mem.Config{Name: "x", Limits: kvdriver.Limits{MaxKeyBytes: 64, MaxValueBytes: 50, MaxBatchOps: 7, MaxBatchBytes: 100}}},
	} {
		u, _ := url.Parse(c.url)
		got, err := mem.ParseURL(u)
		if err != nil || got != c.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", c.url, got, err, c.want)
		}
	}
	for _, bad := range []string{"mem:dev", "mem://dev/sub", "mem://u:p@dev", "mem://dev:1", "mem://?history=0", "mem://?history=-1", "mem://?history=x", "mem://?bogus=1", "mem://?history=1&history=2", "mem://#frag", "mem://?max-key-bytes=2000"} {
		_, err := kvdriver.Open(context.Background(), bad)
		if !errors.Is(err, kvdriver.ErrInvalidURL) {
			t.Errorf("Open(%q) = %v, want ErrInvalidURL", bad, err)
		}
	}
}

func TestPrivateAndNamed(t *testing.T) {
	ctx := context.Background()
	a, b := open(t, "mem://"), open(t, "mem://")
	if _, err := a.Put(ctx, "/k", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "/k"); !errors.Is(err, kvdriver.ErrNotFound) {
		t.Errorf("a second mem:// store sees the first one's key: %v", err)
	}

	name := "mem://named-" + t.Name()
	n1 := open(t, name)
	rev, err := n1.Put(ctx, "/k", []byte(`2`))
	if err != nil {
		t.Fatal(err)
	}
	n2 := open(t, name+"?history=10000") // the default, so no conflict
	if kv, err := n2.Get(ctx, "/k"); err != nil || kv.ModRevision != rev {
		t.Errorf("second Open of %s: Get = %+v, %v; want the first one's key", name, kv, err)
	}
	// Closing every store keeps the named data.
	_ = n1.Close()
	_ = n2.Close()
	n3 := open(t, name)
	if _, err := n3.Get(ctx, "/k"); err != nil {
		t.Errorf("named store lost its data after Close: %v", err)
	}
	// Asking for other settings is an error, not a silent surprise.
	if _, err := kvdriver.Open(ctx, name+"?history=5"); !errors.Is(err, kvdriver.ErrInvalidURL) || !strings.Contains(err.Error(), "history 5") {
		t.Errorf("Open of %s with another history: %v, want ErrInvalidURL naming it", name, err)
	}
	if l := n3.Limits(); l != mem.DefaultLimits {
		t.Errorf("Limits() = %+v, want the defaults %+v", l, mem.DefaultLimits)
	}
}

// TestHistoryBound: a watcher further behind than the retained history
// ends with ErrCompacted instead of missing events, and never holds up a
// writer.
func TestHistoryBound(t *testing.T) {
	ctx := context.Background()
	s := open(t, "mem://?history=10")
	rev, _ := s.Put(ctx, "/k", []byte(`0`))
	slow := s.Watch(ctx, "/", rev) // nobody reads it for now
	for i := 1; i <= 50; i++ {
		if _, err := s.Put(ctx, "/k", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// It had one response in flight at most; then the history moved on.
	var events int
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r, ok := <-slow:
			if !ok {
				t.Fatalf("slow watch closed without ErrCompacted after %d events", events)
			}
			events += len(r.Events)
			if r.Err != nil {
				if !errors.Is(r.Err, kvdriver.ErrCompacted) {
					t.Fatalf("slow watch ended with %v, want ErrCompacted", r.Err)
				}
				return
			}
		case <-timeout:
			t.Fatalf("slow watch: no ErrCompacted within 10s (%d events)", events)
		}
	}
}

// TestWatchesAreIndependent: a watcher nobody reads does not delay another.
func TestWatchesAreIndependent(t *testing.T) {
	ctx := context.Background()
	s := open(t, "mem://")
	_ = s.Watch(ctx, "/", 0) // never read
	fast := s.Watch(ctx, "/", 0)
	for i := 1; i <= 200; i++ {
		rev, err := s.Put(ctx, "/k", []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-fast:
			if r.Err != nil || r.Revision != rev {
				t.Fatalf("fast watcher got %+v, want revision %d", r, rev)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("fast watcher stuck at write %d", i)
		}
	}
}

func TestCompactFuture(t *testing.T) {
	ctx := context.Background()
	s := open(t, "mem://")
	rev, _ := s.Put(ctx, "/k", []byte(`1`))
	if err := s.Compact(ctx, rev+1); err == nil {
		t.Errorf("Compact(%d) beyond the current revision %d succeeded", rev+1, rev)
	}
	if err := s.Compact(ctx, rev); err != nil {
		t.Errorf("Compact(current): %v", err)
	}
	if err := s.Compact(ctx, rev-1); err != nil {
		t.Errorf("Compact below the last compaction: %v, want nil (nothing to do)", err)
	}
}

func TestCloseLeavesOthers(t *testing.T) {
	ctx := context.Background()
	name := "mem://close-" + t.Name()
	a, b := open(t, name), open(t, name)
	wa := a.Watch(ctx, "/", 0)
	wb := b.Watch(ctx, "/", 0)
	_ = a.Close()
	if _, ok := <-wa; ok {
		t.Errorf("watch of a closed store delivered a response")
	}
	rev, err := b.Put(ctx, "/k", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	if r := <-wb; r.Revision != rev {
		t.Errorf("other store's watch: %+v, want revision %d", r, rev)
	}
}

func ExampleOpen() {
	ctx := context.Background()
	store, err := mem.Open(ctx, mem.Config{Name: "example"})
	if err != nil {
		panic(err)
	}
	defer store.Close()
	rev, _ := store.Put(ctx, "/Index/1", []byte(`{"id":1}`))
	events := store.Watch(ctx, "/Index", rev-1)
	resp := <-events
	fmt.Println(resp.Events[0].Type, resp.Events[0].Key, string(resp.Events[0].Value))
	// Output: put /Index/1 {"id":1}
}

// No error shows a token= (or password=) value, user info password or
// unknown parameter's value, whichever check refuses the URL.
func TestParseURLHidesSecrets(t *testing.T) {
	for _, raw := range []string{
		"mem://x?token=tok-s3cret",
		"mem://x?history=5&token=tok-s3cret",
		"mem://x?api_token=tok-s3cret",
		"mem://x:1?token=tok-s3cret",
		"mem://x/sub?password=tok-s3cret",
		"mem://u:tok-s3cret@x",
		"mem://x?token=tok-s3cret#frag",
		"mem://x?bogus=tok-s3cret",
	} {
		_, err := kvdriver.Open(context.Background(), raw)
		if !errors.Is(err, kvdriver.ErrInvalidURL) {
			t.Errorf("Open(%q) = %v, want ErrInvalidURL", raw, err)
			continue
		}
		if strings.Contains(err.Error(), "tok-s3cret") {
			t.Errorf("Open(%q): the error shows the secret: %v", raw, err)
		}
	}
}
