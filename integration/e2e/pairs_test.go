package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The pair invariants watch what the store goes through, not only where it
// ends. One writer sets /Config/pair%2Fa and /Config/pair%2Fb to the same
// ever-growing n in each of its transactions; other writers may delete,
// move or truncate them. A watcher of the store then checks, revision by
// revision:
//   - atomicity: whenever both keys exist their n is equal (the agent
//     applies a transaction as one batch);
//   - no going back: a key's n never decreases (a replay after a crash
//     must not put an older value back).
const (
	pairA = "/Config/pair%2Fa"
	pairB = "/Config/pair%2Fb"
)

// writePairs commits pair transactions until ctx ends.
func writePairs(ctx context.Context, pool *pgxpool.Pool) (committed int) {
	for n := 1; ctx.Err() == nil; n++ {
		v := fmt.Sprintf(`{"n": %d}`, n)
		_, err := pool.Exec(ctx, `SELECT storage.save_config('pair/a', $1::json), storage.save_config('pair/b', $1::json)`, v)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		committed++
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return committed
}

// pairWatcher checks the pair invariants on the store's event stream.
type pairWatcher struct {
	mu         sync.Mutex
	cur        map[string]int // key → n currently in the store (absent: deleted)
	last       map[string]int // key → highest n seen
	events     int
	violations []string
	watchErrs  int
}

// watchPairs watches the pair keys from the store's current state until ctx
// ends. A watch that ends with an error is resumed from its last revision.
func watchPairs(ctx context.Context, store *kvdriver.Store) *pairWatcher {
	w := &pairWatcher{cur: map[string]int{}, last: map[string]int{}}
	go func() {
		var rev int64
		for ctx.Err() == nil {
			if rev == 0 {
				kvs, r, err := store.List(ctx, "/Config")
				if err != nil {
					w.watchErr()
					sleepCtx(ctx, 100*time.Millisecond)
					continue
				}
				var evs []kvdriver.Event
				for _, kv := range kvs {
					if kv.Key == pairA || kv.Key == pairB {
						evs = append(evs, kvdriver.Event{Type: kvdriver.OpPut, Key: kv.Key, Value: kv.Value, Revision: r})
					}
				}
				w.apply(r, evs)
				rev = r
			}
			for resp := range store.Watch(ctx, "/Config", rev) {
				if resp.Err != nil {
					w.watchErr()
					if errors.Is(resp.Err, kvdriver.ErrCompacted) {
						rev = 0 // list again
					}
					break
				}
				// A response may hold several revisions: apply each whole.
				var batch []kvdriver.Event
				for i, ev := range resp.Events {
					if ev.Key == pairA || ev.Key == pairB {
						batch = append(batch, ev)
					}
					if i == len(resp.Events)-1 || resp.Events[i+1].Revision != ev.Revision {
						w.apply(ev.Revision, batch)
						batch = nil
					}
				}
				if resp.Revision > rev {
					rev = resp.Revision
				}
			}
		}
	}()
	return w
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (w *pairWatcher) watchErr() {
	w.mu.Lock()
	w.watchErrs++
	w.mu.Unlock()
}

// apply applies the pair events of one store revision and checks the
// invariants on the state after it.
func (w *pairWatcher) apply(rev int64, evs []kvdriver.Event) {
	if len(evs) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range evs {
		w.events++
		if ev.Type == kvdriver.OpDelete {
			delete(w.cur, ev.Key)
			continue
		}
		var v struct {
			Value struct {
				N *int `json:"n"`
			} `json:"value"`
		}
		if err := json.Unmarshal(ev.Value, &v); err != nil || v.Value.N == nil {
			// Another writer moved some other config row onto this key.
			delete(w.cur, ev.Key)
			continue
		}
		n := *v.Value.N
		if n < w.last[ev.Key] {
			w.violate("revision %d: %s went back from n=%d to n=%d", rev, ev.Key, w.last[ev.Key], n)
		}
		w.last[ev.Key] = max(w.last[ev.Key], n)
		w.cur[ev.Key] = n
	}
	a, okA := w.cur[pairA]
	b, okB := w.cur[pairB]
	if okA && okB && a != b {
		w.violate("revision %d: %s has n=%d but %s has n=%d: a transaction was split", rev, pairA, a, pairB, b)
	}
}

func (w *pairWatcher) violate(format string, args ...any) {
	if len(w.violations) < 20 {
		w.violations = append(w.violations, fmt.Sprintf(format, args...))
	}
}

func (w *pairWatcher) result() (events int, violations []string, watchErrs int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events, append([]string(nil), w.violations...), w.watchErrs
}

// TestPairWatcherDetects shows the pair checks can fail: it feeds the
// watcher store histories that no sequence of database states explains.
func TestPairWatcherDetects(t *testing.T) {
	put := func(key string, n int) kvdriver.Event {
		return kvdriver.Event{Type: kvdriver.OpPut, Key: key, Value: fmt.Appendf(nil, `{"id": 1, "key": "x", "value": {"n": %d}}`, n)}
	}
	del := func(key string) kvdriver.Event { return kvdriver.Event{Type: kvdriver.OpDelete, Key: key} }
	for _, tc := range []struct {
		name    string
		history [][]kvdriver.Event // one slice per revision
		bad     bool
	}{
		{"whole transactions", [][]kvdriver.Event{{put(pairA, 1), put(pairB, 1)}, {put(pairA, 2), put(pairB, 2)}}, false},
		{"one deleted, then both again", [][]kvdriver.Event{{put(pairA, 1), put(pairB, 1)}, {del(pairA)}, {put(pairA, 3), put(pairB, 3)}}, false},
		{"initial sync writes one, then the other", [][]kvdriver.Event{{put(pairA, 4)}, {put(pairB, 4)}}, false},
		{"split transaction", [][]kvdriver.Event{{put(pairA, 1), put(pairB, 1)}, {put(pairA, 2)}, {put(pairB, 2)}}, true},
		{"replayed older value", [][]kvdriver.Event{{put(pairA, 5), put(pairB, 5)}, {put(pairA, 4), put(pairB, 4)}}, true},
		{"older value after a delete", [][]kvdriver.Event{{put(pairA, 5)}, {del(pairA)}, {put(pairA, 4)}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &pairWatcher{cur: map[string]int{}, last: map[string]int{}}
			for i, evs := range tc.history {
				w.apply(int64(i+1), evs)
			}
			_, violations, _ := w.result()
			if got := len(violations) > 0; got != tc.bad {
				t.Fatalf("violations %v, want bad=%v", violations, tc.bad)
			}
		})
	}
}
