package kvdriver_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

// fakeDriver records the calls that reach it and fails with err, if set.
type fakeDriver struct {
	mu     sync.Mutex
	calls  []string
	closes int
	err    error
	code   kvdriver.ErrorCode // what ErrorCode says of err
}

var _ kvdriver.Driver = (*fakeDriver)(nil)

func (f *fakeDriver) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.err
}

func (f *fakeDriver) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeDriver) Get(_ context.Context, key string) (kvdriver.KV, error) {
	return kvdriver.KV{Key: key, Value: []byte("1"), ModRevision: 2}, f.record("get " + key)
}

func (f *fakeDriver) List(_ context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	return nil, 2, f.record("list " + prefix)
}

func (f *fakeDriver) Apply(_ context.Context, ops []kvdriver.Op) (int64, error) {
	var b strings.Builder
	for _, op := range ops {
		b.WriteString(" " + op.Type.String() + " " + op.Key)
	}
	return 3, f.record("apply" + b.String())
}

func (f *fakeDriver) Watch(ctx context.Context, prefix string, _ int64) <-chan kvdriver.WatchResponse {
	ch := make(chan kvdriver.WatchResponse, 1)
	if err := f.record("watch " + prefix); err != nil {
		ch <- kvdriver.WatchResponse{Err: err}
		close(ch)
		return ch
	}
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch
}

func (f *fakeDriver) Compact(context.Context, int64) error { return f.record("compact") }

func (f *fakeDriver) Limits() kvdriver.Limits { return kvdriver.Limits{MaxBatchOps: 4} }

func (f *fakeDriver) ErrorCode(error) kvdriver.ErrorCode { return f.code }

func (f *fakeDriver) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

// putDriver also has the single-key fast path.
type putDriver struct{ *fakeDriver }

func (p putDriver) Put(_ context.Context, key string, _ []byte) (int64, error) {
	return 4, p.record("put " + key)
}

func (p putDriver) Delete(_ context.Context, key string) (int64, error) {
	return 4, p.record("delete " + key)
}

// TestStoreValidatesBeforeDriver: bad keys, prefixes, values and batches
// are refused by Store with the right sentinel and a message naming the
// driver; the driver never sees them.
func TestStoreValidatesBeforeDriver(t *testing.T) {
	ctx := context.Background()
	f := &fakeDriver{}
	s := kvdriver.NewStore("fake", f)
	defer s.Close()
	calls := []struct {
		name string
		want error
		call func() error
	}{
		{"Get of an empty key", kvdriver.ErrInvalidKey, func() error { _, err := s.Get(ctx, ""); return err }},
		{"Put of a relative key", kvdriver.ErrInvalidKey, func() error { _, err := s.Put(ctx, "a", []byte("1")); return err }},
		{"Put of invalid JSON", kvdriver.ErrInvalidValue, func() error { _, err := s.Put(ctx, "/a", []byte("{")); return err }},
		{"Delete of the root", kvdriver.ErrInvalidKey, func() error { _, err := s.Delete(ctx, "/"); return err }},
		{"List of a prefix with an empty segment", kvdriver.ErrInvalidKey, func() error { _, _, err := s.List(ctx, "/a//b"); return err }},
		{"Apply naming a key twice", kvdriver.ErrInvalidBatch, func() error {
			_, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Put("/a", []byte("1")), kvdriver.Delete("/a")})
			return err
		}},
		{"Apply of a batch beyond the limits", kvdriver.ErrTooLarge, func() error {
			ops := []kvdriver.Op{kvdriver.Delete("/a"), kvdriver.Delete("/b"), kvdriver.Delete("/c"), kvdriver.Delete("/d"), kvdriver.Delete("/e")}
			_, err := s.Apply(ctx, ops)
			return err
		}},
	}
	for _, c := range calls {
		err := c.call()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want an error wrapping %v", c.name, err, c.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "fake: ") {
			t.Errorf("%s: %q does not start with the driver's name", c.name, err)
		}
		if got, want := kvdriver.Code(err).String(), map[error]string{kvdriver.ErrTooLarge: "TooLarge"}[c.want]; want != "" && got != want {
			t.Errorf("%s: code %s, want %s", c.name, got, want)
		}
		if kvdriver.Retryable(err) {
			t.Errorf("%s: %v is retryable", c.name, err)
		}
	}
	if seen := f.seen(); len(seen) != 0 {
		t.Errorf("the driver saw %q, want no call", seen)
	}
	// A good call goes through, with the prefix in canonical form.
	if _, _, err := s.List(ctx, "/a/"); err != nil {
		t.Fatal(err)
	}
	if seen := f.seen(); len(seen) != 1 || seen[0] != "list /a" {
		t.Errorf("the driver saw %q, want [list /a]", seen)
	}
}

// TestStoreWatchPrologue: a bad prefix, a negative revision and a closed
// store end a watch with one error response before the driver sees it; a
// cancelled context closes the channel without one.
func TestStoreWatchPrologue(t *testing.T) {
	f := &fakeDriver{}
	s := kvdriver.NewStore("fake", f)
	one := func(name string, ch <-chan kvdriver.WatchResponse, want error) {
		t.Helper()
		var rs []kvdriver.WatchResponse
		for r := range ch {
			rs = append(rs, r)
		}
		switch {
		case want == nil && len(rs) != 0:
			t.Errorf("%s: %d responses (%v), want the channel closed without one", name, len(rs), rs[0].Err)
		case want != nil && (len(rs) != 1 || !errors.Is(rs[0].Err, want)):
			t.Errorf("%s: responses %+v, want one with an error wrapping %v", name, rs, want)
		}
	}
	ctx := context.Background()
	one("bad prefix", s.Watch(ctx, "/a//", 0), kvdriver.ErrInvalidKey)
	ch := s.Watch(ctx, "/a", -1)
	r := <-ch
	if kvdriver.Code(r.Err) != kvdriver.InvalidArgument {
		t.Errorf("negative revision: %v (code %v), want InvalidArgument", r.Err, kvdriver.Code(r.Err))
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	one("cancelled context", s.Watch(cancelled, "/a", 0), nil)
	if seen := f.seen(); len(seen) != 0 {
		t.Errorf("the driver saw %q, want no call", seen)
	}

	// A running watch ends with Close; a later one gets ErrClosed.
	running := s.Watch(ctx, "/a/", 5)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	one("watch running at Close", running, nil)
	one("watch after Close", s.Watch(ctx, "/a", 0), kvdriver.ErrClosed)
	if seen := f.seen(); len(seen) != 1 || seen[0] != "watch /a" {
		t.Errorf("the driver saw %q, want [watch /a]", seen)
	}
}

// TestStoreClose: Close closes the driver once; every call after it fails
// with ErrClosed without reaching the driver; Limits still answers.
func TestStoreClose(t *testing.T) {
	ctx := context.Background()
	f := &fakeDriver{}
	s := kvdriver.NewStore("fake", f)
	for range 2 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if f.closes != 1 {
		t.Errorf("the driver was closed %d times, want 1", f.closes)
	}
	for name, call := range map[string]func() error{
		"Get":     func() error { _, err := s.Get(ctx, "/a"); return err },
		"Put":     func() error { _, err := s.Put(ctx, "/a", []byte("1")); return err },
		"Delete":  func() error { _, err := s.Delete(ctx, "/a"); return err },
		"List":    func() error { _, _, err := s.List(ctx, "/"); return err },
		"Apply":   func() error { _, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Delete("/a")}); return err },
		"Compact": func() error { return s.Compact(ctx, 1) },
	} {
		if err := call(); !errors.Is(err, kvdriver.ErrClosed) || kvdriver.Code(err) != kvdriver.Closed {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if seen := f.seen(); len(seen) != 0 {
		t.Errorf("the driver saw %q after Close", seen)
	}
	if s.Limits().MaxBatchOps != 4 {
		t.Errorf("Limits after Close: %+v", s.Limits())
	}
}

// TestStoreClassifies: a driver's own error gets the sentinel of the code
// its ErrorCode gives, and Retryable answers from the code, whatever the
// driver.
func TestStoreClassifies(t *testing.T) {
	ctx := context.Background()
	serverErr := errors.New("server said no")
	for _, c := range []struct {
		code      kvdriver.ErrorCode
		sentinel  error
		retryable bool
	}{
		{kvdriver.Unknown, nil, true},
		{kvdriver.Unavailable, nil, true},
		{kvdriver.TooLarge, kvdriver.ErrTooLarge, false},
		{kvdriver.Compacted, kvdriver.ErrCompacted, false},
		{kvdriver.PermissionDenied, nil, false},
		{kvdriver.FailedPrecondition, nil, false},
	} {
		s := kvdriver.NewStore("fake", &fakeDriver{err: serverErr, code: c.code})
		_, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Delete("/a")})
		if got := kvdriver.Code(err); got != c.code {
			t.Errorf("driver code %v: Code = %v", c.code, got)
		}
		if c.sentinel != nil && !errors.Is(err, c.sentinel) {
			t.Errorf("driver code %v: %v does not wrap %v", c.code, err, c.sentinel)
		}
		if !errors.Is(err, serverErr) || !strings.HasPrefix(err.Error(), "fake: apply 1 operations: ") {
			t.Errorf("driver code %v: %q, want the driver's error behind the driver and the operation", c.code, err)
		}
		if got := kvdriver.Retryable(err); got != c.retryable {
			t.Errorf("driver code %v: Retryable = %v, want %v", c.code, got, c.retryable)
		}
		s.Close()
	}
	// Sentinels and context errors classify without a Store.
	for err, want := range map[error]kvdriver.ErrorCode{
		nil:                                  kvdriver.OK,
		kvdriver.ErrNotFound:                 kvdriver.NotFound,
		kvdriver.ErrConflict:                 kvdriver.Conflict,
		kvdriver.ErrUnsupportedScheme:        kvdriver.InvalidArgument,
		context.Canceled:                     kvdriver.Canceled,
		context.DeadlineExceeded:             kvdriver.Unavailable,
		errors.New("connection refused"):     kvdriver.Unknown,
		kvdriver.ErrInvalidURL:               kvdriver.InvalidArgument,
		errors.Join(kvdriver.ErrClosed, nil): kvdriver.Closed,
	} {
		if got := kvdriver.Code(err); got != want {
			t.Errorf("Code(%v) = %v, want %v", err, got, want)
		}
	}
}

// TestStoreSingleKeyWrites: Put and Delete use the driver's fast path
// when it has one, a one-operation Apply otherwise.
func TestStoreSingleKeyWrites(t *testing.T) {
	ctx := context.Background()
	plain := &fakeDriver{}
	fast := putDriver{&fakeDriver{}}
	for _, c := range []struct {
		d    kvdriver.Driver
		seen *fakeDriver
		want []string
	}{
		{plain, plain, []string{"apply put /a", "apply delete /a"}},
		{fast, fast.fakeDriver, []string{"put /a", "delete /a"}},
	} {
		s := kvdriver.NewStore("fake", c.d)
		if _, err := s.Put(ctx, "/a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Delete(ctx, "/a"); err != nil {
			t.Fatal(err)
		}
		if got := c.seen.seen(); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%T saw %q, want %q", c.d, got, c.want)
		}
		s.Close()
	}
}

// TestStoreAs: As reaches the driver by its type or an interface it
// implements, and nothing else.
func TestStoreAs(t *testing.T) {
	f := &fakeDriver{}
	s := kvdriver.NewStore("fake", f)
	defer s.Close()
	var d *fakeDriver
	if !s.As(&d) || d != f {
		t.Errorf("As(*fakeDriver) = %v", d)
	}
	var drv kvdriver.Driver
	if !s.As(&drv) || drv != kvdriver.Driver(f) {
		t.Errorf("As(Driver) = %v", drv)
	}
	var p kvdriver.Putter
	if s.As(&p) {
		t.Error("As(Putter) succeeded on a driver without Put")
	}
	if s.As(nil) || s.As(d) {
		t.Error("As of a nil or non-pointer-to-variable target succeeded")
	}
}
