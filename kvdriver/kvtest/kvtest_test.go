package kvtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// memHarness opens every store on one named mem store, its driver wrapped
// by wrap (when set) inside the portable Store.
type memHarness struct {
	name string
	wrap func(kvdriver.Driver) kvdriver.Driver
}

func (h *memHarness) MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error) {
	s, err := mem.Open(ctx, mem.Config{Name: h.name})
	if err != nil {
		return nil, err
	}
	if h.wrap == nil {
		return s, nil
	}
	var d kvdriver.Driver
	if !s.As(&d) {
		return nil, fmt.Errorf("mem store without a driver")
	}
	// The new Store owns the driver: closing it closes the driver.
	return kvdriver.NewStore("broken", h.wrap(d)), nil
}

func (h *memHarness) Close() {}

func newMemHarness(wrap func(kvdriver.Driver) kvdriver.Driver) HarnessMaker {
	return func(ctx context.Context, t *testing.T) (Harness, error) {
		return &memHarness{name: "kvtest-" + t.Name(), wrap: wrap}, nil
	}
}

// TestMem: the suite passes on a correct driver.
func TestMem(t *testing.T) {
	RunConformanceTests(t, newMemHarness(nil))
}

// brokenEnv names the broken driver TestBrokenDriverHelper runs the suite
// on, in the subprocess TestSuiteCatchesBrokenDrivers starts.
const brokenEnv = "KVTEST_BROKEN_DRIVER"

// broken are drivers that each break one promise of the Store contract
// that is the driver's to keep, tested through the portable Store.
var broken = map[string]func(kvdriver.Driver) kvdriver.Driver{
	// dropEvent loses the third event of every watch.
	"drop-event": func(s kvdriver.Driver) kvdriver.Driver {
		return &badWatch{Driver: s, edit: func(n int, r kvdriver.WatchResponse) []kvdriver.WatchResponse {
			if i := 2 - n; i >= 0 && i < len(r.Events) {
				r.Events = append(r.Events[:i:i], r.Events[i+1:]...)
				if len(r.Events) == 0 {
					return nil
				}
			}
			return []kvdriver.WatchResponse{r}
		}}
	},
	// dupEvent delivers the third event of every watch twice, the second
	// time in a response of its own.
	"dup-event": func(s kvdriver.Driver) kvdriver.Driver {
		return &badWatch{Driver: s, edit: func(n int, r kvdriver.WatchResponse) []kvdriver.WatchResponse {
			if i := 2 - n; i >= 0 && i < len(r.Events) {
				again := kvdriver.WatchResponse{Events: []kvdriver.Event{r.Events[i]}, Revision: r.Revision}
				return []kvdriver.WatchResponse{r, again}
			}
			return []kvdriver.WatchResponse{r}
		}}
	},
	// splitBatch delivers every event in a response of its own, splitting
	// batches.
	"split-batch": func(s kvdriver.Driver) kvdriver.Driver {
		return &badWatch{Driver: s, edit: func(n int, r kvdriver.WatchResponse) []kvdriver.WatchResponse {
			if r.Err != nil || len(r.Events) < 2 {
				return []kvdriver.WatchResponse{r}
			}
			var out []kvdriver.WatchResponse
			for _, ev := range r.Events {
				out = append(out, kvdriver.WatchResponse{Events: []kvdriver.Event{ev}, Revision: ev.Revision})
			}
			return out
		}}
	},
	// nonAtomicApply applies a batch one operation at a time.
	"nonatomic-apply": func(s kvdriver.Driver) kvdriver.Driver { return nonAtomic{s} },
	// swallowError ends a failed watch by closing its channel, without
	// saying why (so a compacted watch looks like a finished one).
	"swallow-error": func(s kvdriver.Driver) kvdriver.Driver {
		return &badWatch{Driver: s, edit: func(n int, r kvdriver.WatchResponse) []kvdriver.WatchResponse {
			if r.Err != nil {
				return nil
			}
			return []kvdriver.WatchResponse{r}
		}}
	},
	// staleList reports a listing one revision older than it is, so a
	// watch from it replays a change the listing already holds.
	"stale-list": func(s kvdriver.Driver) kvdriver.Driver { return staleList{s} },
	// ignoreRequire drops a batch's Requires and applies the rest.
	"ignore-require": func(s kvdriver.Driver) kvdriver.Driver { return ignoreRequire{s} },
}

// wantCaught are, per broken driver, the checks that must fail and a
// phrase their failure must contain.
var wantCaught = map[string]map[string]string{
	"drop-event": {
		"ConcurrentWriters": "missing events",
		"WatchReplay":       "missing events",
	},
	"dup-event": {
		"ConcurrentWriters": "delivered twice",
		"WatchReplay":       "delivered twice",
	},
	"split-batch": {
		"BatchAtomicity":    "split across",
		"ConcurrentWriters": "split across",
		"WatchReplay":       "split across",
	},
	"nonatomic-apply": {
		// The watcher's check is deterministic: every op got its own
		// revision. The concurrent lister's "half-applied" catches it too,
		// but only when it is scheduled inside an Apply, which a busy
		// machine does not promise.
		"BatchAtomicity": "delivered 1 events, want",
		// InvalidBatches no longer catches it: Store refuses an invalid
		// batch before any driver sees it (TestStoreValidatesBeforeDriver
		// in package kvdriver holds that).
		"BatchAllOrNothing": "want ErrNotFound",
	},
	"swallow-error": {
		// A bad prefix and a closed store end a watch in Store, before
		// the driver (TestStoreWatchPrologue in package kvdriver).
		"Compaction": "want an error wrapping ErrCompacted",
	},
	"stale-list": {
		"ListRevision": "unexpected events",
	},
	"ignore-require": {
		"Require": "want an error wrapping",
	},
}

// TestBrokenDriverHelper runs the suite on the broken driver named by
// $KVTEST_BROKEN_DRIVER. It is the subprocess of
// TestSuiteCatchesBrokenDrivers and passes trivially on its own.
func TestBrokenDriverHelper(t *testing.T) {
	mode := os.Getenv(brokenEnv)
	if mode == "" {
		return
	}
	wrap, ok := broken[mode]
	if !ok {
		t.Fatalf("unknown broken driver %q", mode)
	}
	// A dropped last event is only noticed by waiting for it.
	waitTimeout = 2 * time.Second
	RunConformanceTests(t, newMemHarness(wrap))
}

// TestSuiteCatchesBrokenDrivers runs the suite on each broken driver in a
// subprocess (a failing suite fails its *testing.T, so it cannot run in
// this process) and checks that it fails, in the checks that must catch
// the breakage, with a message naming it.
func TestSuiteCatchesBrokenDrivers(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for mode, want := range wantCaught {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestBrokenDriverHelper$", "-test.count=1", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), brokenEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed on the %s driver:\n%s", mode, out)
			}
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatalf("run suite on %s driver: %v\n%s", mode, err, out)
			}
			failed := failedChecks(string(out))
			for check, phrase := range want {
				msgs, ok := failed[check]
				if !ok {
					t.Errorf("%s driver: check %s did not fail (failed: %v)", mode, check, keys(failed))
					continue
				}
				if !strings.Contains(msgs, phrase) {
					t.Errorf("%s driver: check %s failed without saying %q:\n%s", mode, check, phrase, msgs)
				}
			}
			if t.Failed() {
				t.Logf("suite output:\n%s", out)
			} else {
				t.Logf("%s driver: failed checks %v", mode, keys(failed))
			}
		})
	}
}

var failLine = regexp.MustCompile(`(?m)^\s*--- FAIL: TestBrokenDriverHelper/(\w+)`)

// failedChecks maps each failed check of a `go test -v` output to its
// log output.
func failedChecks(out string) map[string]string {
	failed := map[string]string{}
	for _, m := range failLine.FindAllStringSubmatchIndex(out, -1) {
		name := out[m[2]:m[3]]
		// The check's messages follow its FAIL line, indented deeper.
		rest := out[m[1]:]
		end := failLine.FindStringIndex(rest)
		if end != nil {
			rest = rest[:end[0]]
		}
		failed[name] += rest
	}
	return failed
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// badWatch rewrites the responses of every watch with edit (n counts the
// events delivered before r).
type badWatch struct {
	kvdriver.Driver
	edit func(n int, r kvdriver.WatchResponse) []kvdriver.WatchResponse
}

func (b *badWatch) Watch(ctx context.Context, prefix string, afterRev int64) <-chan kvdriver.WatchResponse {
	in := b.Driver.Watch(ctx, prefix, afterRev)
	out := make(chan kvdriver.WatchResponse)
	go func() {
		defer close(out)
		n := 0
		for r := range in {
			edited := b.edit(n, r)
			n += len(r.Events)
			for _, e := range edited {
				select {
				case out <- e:
				case <-ctx.Done():
					for range in {
					}
					return
				}
			}
		}
	}()
	return out
}

// staleList under-reports List's revision by one.
type staleList struct{ kvdriver.Driver }

func (s staleList) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	kvs, rev, err := s.Driver.List(ctx, prefix)
	return kvs, rev - 1, err
}

// nonAtomic applies a batch's operations one by one, checking a Require
// when it comes to it, stopping at the first error.
type nonAtomic struct{ kvdriver.Driver }

func (s nonAtomic) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	var rev int64
	var err error
	for i, op := range ops {
		switch op.Type {
		case kvdriver.OpPut, kvdriver.OpDelete:
			rev, err = s.Driver.Apply(ctx, []kvdriver.Op{op})
		case kvdriver.OpRequire:
			kv, gerr := s.Driver.Get(ctx, op.Key)
			if gerr != nil && !errors.Is(gerr, kvdriver.ErrNotFound) {
				err = gerr
			} else if kv.ModRevision != op.ModRevision {
				err = fmt.Errorf("%w: %q at %d", kvdriver.ErrConflict, op.Key, kv.ModRevision)
			}
		default:
			err = fmt.Errorf("%w: unknown op type", kvdriver.ErrInvalidBatch)
		}
		if err != nil {
			return 0, fmt.Errorf("op %d: %w", i, err)
		}
	}
	return rev, nil
}

// ignoreRequire applies a batch without its Requires.
type ignoreRequire struct{ kvdriver.Driver }

func (s ignoreRequire) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	var rest []kvdriver.Op
	for _, op := range ops {
		if op.Type != kvdriver.OpRequire {
			rest = append(rest, op)
		}
	}
	return s.Driver.Apply(ctx, rest)
}
