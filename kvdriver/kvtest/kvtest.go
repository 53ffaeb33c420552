package kvtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Bounds on every wait, so a broken driver fails with a message instead of
// hanging the test binary. They are variables so the suite's own test can
// shorten them when it runs the suite against deliberately broken drivers.
var (
	// waitTimeout bounds waiting for a watch to deliver what it should.
	waitTimeout = 15 * time.Second
	// opTimeout bounds a single store call.
	opTimeout = 20 * time.Second
	// promptly is how fast a call with a cancelled context must return.
	promptly = 5 * time.Second
)

// check is one named conformance check.
type check struct {
	name string
	run  func(e *env)
}

// checks are run in this order; Reconnect is added for Restarters.
var checks = []check{
	{"FirstListRevision", testFirstListRevision},
	{"CRUD", testCRUD},
	{"PrefixIsolation", testPrefixIsolation},
	{"TrailingSlashPrefix", testTrailingSlashPrefix},
	{"ListRevision", testListRevision},
	{"WatchReplay", testWatchReplay},
	{"WatchFromZero", testWatchFromZero},
	{"BatchAtomicity", testBatchAtomicity},
	{"BatchAllOrNothing", testBatchAllOrNothing},
	{"Require", testRequire},
	{"Compaction", testCompaction},
	{"ConcurrentWriters", testConcurrentWriters},
	{"SlowWatcher", testSlowWatcher},
	{"Limits", testLimits},
	{"InvalidKeys", testInvalidKeys},
	{"InvalidValues", testInvalidValues},
	{"InvalidBatches", testInvalidBatches},
	{"ContextCancel", testContextCancel},
	{"Close", testClose},
}

// RunConformanceTests runs the conformance checks, each as a subtest of t,
// against the driver newHarness connects to. The harness is made once and
// closed when t ends; see the package documentation for the checks.
func RunConformanceTests(t *testing.T, newHarness HarnessMaker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	h, err := newHarness(ctx, t)
	cancel()
	if err != nil {
		t.Fatalf("kvtest: make harness: %v", err)
	}
	t.Cleanup(h.Close)
	run := runID()
	all := checks
	if _, ok := h.(Restarter); ok {
		all = append(all[:len(all):len(all)], check{"Reconnect", testReconnect})
	} else {
		t.Logf("kvtest: harness %T does not implement Restarter: no Reconnect check", h)
	}
	for _, c := range all {
		t.Run(c.name, func(t *testing.T) {
			c.run(&env{t: t, h: h, prefix: "/kvtest/" + run + "/" + c.name})
		})
	}
}

// runID makes the prefix of one run unique on a long-lived server.
func runID() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// env is what a check works with: its subtest, the harness and its own
// key prefix.
type env struct {
	t      *testing.T
	h      Harness
	prefix string
}

// store opens a new store on the harness's server, closed when the check
// ends.
func (e *env) store() *kvdriver.Store {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := e.h.MakeStore(ctx, e.t)
	if err != nil {
		e.t.Fatalf("MakeStore: %v", err)
	}
	e.t.Cleanup(func() { _ = s.Close() })
	return s
}

// key returns the key made of the check's prefix and parts.
func (e *env) key(parts ...string) string {
	return e.prefix + "/" + strings.Join(parts, "/")
}

// ctx returns a context bounding one store call.
func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

// watchCtx returns a context for a watch, cancelled when the check ends.
func (e *env) watchCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	return ctx, cancel
}

// val returns a small JSON document numbered n.
func val(n int) []byte { return []byte(fmt.Sprintf(`{"n":%d}`, n)) }

// jsonString returns a JSON string document exactly size bytes long
// (size >= 2).
func jsonString(size int) []byte {
	b := bytes.Repeat([]byte("x"), size)
	b[0], b[size-1] = '"', '"'
	return b
}

// sameJSON reports whether a and b hold the same JSON document.
func sameJSON(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func (e *env) put(s *kvdriver.Store, key string, value []byte) int64 {
	e.t.Helper()
	rev, err := s.Put(e.ctx(), key, value)
	if err != nil {
		e.t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

func (e *env) del(s *kvdriver.Store, key string) int64 {
	e.t.Helper()
	rev, err := s.Delete(e.ctx(), key)
	if err != nil {
		e.t.Fatalf("Delete(%q): %v", key, err)
	}
	return rev
}

func (e *env) apply(s *kvdriver.Store, ops []kvdriver.Op) int64 {
	e.t.Helper()
	rev, err := s.Apply(e.ctx(), ops)
	if err != nil {
		e.t.Fatalf("Apply(%d ops): %v", len(ops), err)
	}
	return rev
}

func (e *env) list(s *kvdriver.Store, prefix string) ([]kvdriver.KV, int64) {
	e.t.Helper()
	kvs, rev, err := s.List(e.ctx(), prefix)
	if err != nil {
		e.t.Fatalf("List(%q): %v", prefix, err)
	}
	return kvs, rev
}

// wantGet checks that key holds value (JSON-equal) at modRev (when > 0).
func (e *env) wantGet(s *kvdriver.Store, key string, value []byte, modRev int64) {
	e.t.Helper()
	kv, err := s.Get(e.ctx(), key)
	if err != nil {
		e.t.Fatalf("Get(%q): %v", key, err)
	}
	if kv.Key != key || !sameJSON(kv.Value, value) {
		e.t.Errorf("Get(%q) = %q: %s, want %s", key, kv.Key, kv.Value, value)
	}
	if modRev > 0 && kv.ModRevision != modRev {
		e.t.Errorf("Get(%q).ModRevision = %d, want %d (the revision Put returned)", key, kv.ModRevision, modRev)
	}
}

// wantNotFound checks that key is absent.
func (e *env) wantNotFound(s *kvdriver.Store, key, why string) {
	e.t.Helper()
	kv, err := s.Get(e.ctx(), key)
	if !errors.Is(err, kvdriver.ErrNotFound) {
		e.t.Errorf("%s: Get(%q) = (%s, %v), want ErrNotFound", why, key, kv.Value, err)
	}
}

// wantEmpty checks that nothing is stored at or below prefix.
func (e *env) wantEmpty(s *kvdriver.Store, prefix, why string) {
	e.t.Helper()
	kvs, _ := e.list(s, prefix)
	if len(kvs) > 0 {
		e.t.Errorf("%s: List(%q) has %d keys (first %q), want none: something was written", why, prefix, len(kvs), kvs[0].Key)
	}
}

// wantErr checks that err wraps want and names what failed.
func (e *env) wantErr(err, want error, what string) {
	e.t.Helper()
	if !errors.Is(err, want) {
		e.t.Errorf("%s: err = %v, want an error wrapping %q", what, err, want)
	}
}

// keysOf returns the keys of kvs.
func keysOf(kvs []kvdriver.KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key
	}
	return out
}
