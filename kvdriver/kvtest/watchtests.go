package kvtest

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/bagger/lenkwerk/kvdriver"
)

// testWatchReplay: a watch from an old revision replays exactly the events
// after it (puts, deletes, batches; nothing from outside the prefix), then
// continues live.
func testWatchReplay(e *env) {
	t := e.t
	s, s2 := e.store(), e.store()
	p := e.key("w")
	var evs []kvdriver.Event
	put := func(k string, n int) {
		evs = append(evs, putEv(e.key("w", k), val(n), e.put(s, e.key("w", k), val(n))))
	}
	put("a", 1)
	put("b", 2)
	e.put(s, e.key("w-sibling"), val(0)) // outside the prefix
	put("a", 3)
	evs = append(evs, delEv(e.key("w", "b"), e.del(s, e.key("w", "b"))))
	put("c/d", 4)
	from := evs[len(evs)-1].Revision
	put("a", 5)
	e.put(s, e.key("w2", "x"), val(0)) // outside the prefix
	evs = append(evs, delEv(e.key("w", "a"), e.del(s, e.key("w", "a"))))
	rb := e.apply(s, []kvdriver.Op{
		kvdriver.Put(e.key("w", "e"), val(6)),
		kvdriver.Delete(e.key("w", "c/d")),
		kvdriver.Put(e.key("w", "f"), val(7)),
	})
	evs = append(evs, putEv(e.key("w", "e"), val(6), rb), delEv(e.key("w", "c/d"), rb), putEv(e.key("w", "f"), val(7), rb))
	put("g", 8)
	missed := slices.Clone(evs[slices.IndexFunc(evs, func(ev kvdriver.Event) bool { return ev.Revision > from }):])

	ctx, _ := e.watchCtx()
	w := e.watch(ctx, s2, p, from)
	w.mustUntil(evs[len(evs)-1].Revision)
	wantEvents(t, w.name+" replay", sortBatches(w.events), sortBatches(missed))

	// Then live.
	n := len(w.events)
	rl := e.put(s, e.key("w", "live"), val(9))
	w.mustUntil(rl)
	wantEvents(t, w.name+" live", w.events[n:], []kvdriver.Event{putEv(e.key("w", "live"), val(9), rl)})

	// A second replay of the same range gives the same events.
	w2 := e.watch(ctx, s, p, from)
	w2.mustUntil(rl)
	wantEvents(t, w2.name+" second replay", sortBatches(w2.events), sortBatches(w.events))
}

// sortBatches orders events by revision, and by key within a revision:
// the order of a batch's events is not part of the contract.
func sortBatches(evs []kvdriver.Event) []kvdriver.Event {
	out := slices.Clone(evs)
	slices.SortStableFunc(out, func(a, b kvdriver.Event) int {
		return cmp.Or(cmp.Compare(a.Revision, b.Revision), cmp.Compare(a.Key, b.Key))
	})
	return out
}

// testWatchFromZero: afterRev 0 starts at the current revision, so nothing
// already written is replayed and a write made after Watch returns is seen.
func testWatchFromZero(e *env) {
	t := e.t
	s, s2 := e.store(), e.store()
	e.put(s, e.key("z", "old"), val(1))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, s2, e.key("z"), 0)
	r := e.put(s, e.key("z", "new"), val(2))
	w.mustUntil(r)
	wantEvents(t, w.name, w.events, []kvdriver.Event{putEv(e.key("z", "new"), val(2), r)})
}

// testCompaction: a watch from a compacted revision ends with an error
// wrapping ErrCompacted; current values survive; re-listing and watching
// from the listed revision recovers; a watch that is current is unaffected.
func testCompaction(e *env) {
	t := e.t
	s, s2 := e.store(), e.store()
	var revs []int64
	for i := 0; i < 6; i++ {
		revs = append(revs, e.put(s, e.key("c", fmt.Sprint(i%3)), val(i)))
	}
	r0 := revs[0] - 1
	ctx, _ := e.watchCtx()
	live := e.watch(ctx, s2, e.key("c"), revs[5])

	if err := s.Compact(e.ctx(), revs[3]); err != nil {
		t.Fatalf("Compact(%d): %v", revs[3], err)
	}

	w := e.watch(ctx, s2, e.key("c"), r0)
	err := w.end(waitTimeout)
	if !errors.Is(err, kvdriver.ErrCompacted) {
		t.Errorf("%s after Compact(%d): ended with %v, want an error wrapping ErrCompacted", w.name, revs[3], err)
	}
	if len(w.events) > 0 {
		t.Errorf("%s after Compact(%d): got events %s before the error", w.name, revs[3], fmtEvents(w.events))
	}

	// History after the compaction revision is still there.
	wk := e.watch(ctx, s2, e.key("c"), revs[3])
	wk.mustUntil(revs[5])
	wantEvents(t, wk.name, wk.events, []kvdriver.Event{
		putEv(e.key("c", "1"), val(4), revs[4]),
		putEv(e.key("c", "2"), val(5), revs[5]),
	})

	// Compaction keeps current values.
	e.wantGet(s2, e.key("c", "0"), val(3), revs[3])
	e.wantGet(s2, e.key("c", "2"), val(5), revs[5])

	// Recovery: list again, watch from the listed revision.
	kvs, lrev := e.list(s2, e.key("c"))
	if len(kvs) != 3 {
		t.Errorf("List after Compact = %q, want 3 keys", keysOf(kvs))
	}
	rw := e.watch(ctx, s2, e.key("c"), lrev)
	r := e.put(s, e.key("c", "new"), val(7))
	rw.mustUntil(r)
	wantEvents(t, rw.name+" (re-listed)", rw.events, []kvdriver.Event{putEv(e.key("c", "new"), val(7), r)})

	// The watch that was current across the compaction goes on.
	live.mustUntil(r)
	wantEvents(t, live.name+" (open across Compact)", live.events, []kvdriver.Event{putEv(e.key("c", "new"), val(7), r)})
}

// testConcurrentWriters: writers on several connections, watchers on
// others; every watcher sees every revision exactly once, in order, with
// each batch whole.
func testConcurrentWriters(e *env) {
	t := e.t
	const writers, perWriter = 8, 40
	stores := []*kvdriver.Store{e.store(), e.store(), e.store()}
	_, start := e.list(stores[0], e.prefix)

	ctx, _ := e.watchCtx()
	var watchers []*watcher
	for i := 0; i < 3; i++ {
		watchers = append(watchers, e.watch(ctx, stores[i], e.prefix, start))
	}
	sub := e.watch(ctx, stores[1], e.key("w0"), start)

	var (
		mu   sync.Mutex
		want []kvdriver.Event
		wg   sync.WaitGroup
	)
	record := func(evs ...kvdriver.Event) {
		mu.Lock()
		want = append(want, evs...)
		mu.Unlock()
	}
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%len(stores)]
			for i := 0; i < perWriter; i++ {
				k := e.key(fmt.Sprintf("w%d", w), fmt.Sprint(i%7))
				v := []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
				ctx := e.ctx()
				switch {
				case i%10 == 9:
					ops := []kvdriver.Op{
						kvdriver.Put(e.key(fmt.Sprintf("w%d", w), "batch", "a"), v),
						kvdriver.Put(e.key(fmt.Sprintf("w%d", w), "batch", "b"), v),
						kvdriver.Put(e.key(fmt.Sprintf("w%d", w), "batch", "c"), v),
					}
					rev, err := s.Apply(ctx, ops)
					if err != nil {
						t.Errorf("writer %d: Apply: %v", w, err)
						return
					}
					for _, op := range ops {
						record(putEv(op.Key, op.Value, rev))
					}
				case i%10 == 7 && i >= 7:
					// i-1 wrote key (i-1)%7, which still exists.
					dk := e.key(fmt.Sprintf("w%d", w), fmt.Sprint((i-1)%7))
					rev, err := s.Delete(ctx, dk)
					if err != nil {
						t.Errorf("writer %d: Delete: %v", w, err)
						return
					}
					record(delEv(dk, rev))
				default:
					rev, err := s.Put(ctx, k, v)
					if err != nil {
						t.Errorf("writer %d: Put: %v", w, err)
						return
					}
					record(putEv(k, v, rev))
				}
			}
		}()
	}
	// A watcher that joins while the writers run replays, then goes live.
	late := e.watch(ctx, stores[2], e.prefix, start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	want = sortBatches(want)
	for i := 1; i < len(want); i++ {
		if want[i].Revision == want[i-1].Revision && want[i].Key[:len(e.key("w0"))] != want[i-1].Key[:len(e.key("w0"))] {
			t.Fatalf("two writes returned the same revision %d: %s and %s", want[i].Revision, fmtEvent(want[i-1]), fmtEvent(want[i]))
		}
	}
	last := want[len(want)-1].Revision

	all := append(watchers, late)
	errs := make([]error, len(all))
	var dw sync.WaitGroup
	for i, w := range all {
		dw.Add(1)
		go func() { defer dw.Done(); errs[i] = w.until(last) }()
	}
	dw.Wait()
	for i, w := range all {
		if errs[i] != nil {
			t.Errorf("watcher %d: %v", i, errs[i])
			continue
		}
		wantEvents(t, fmt.Sprintf("watcher %d: %s", i, w.name), sortBatches(w.events), want)
	}
	var subWant []kvdriver.Event
	for _, ev := range want {
		if kvdriver.InPrefix(ev.Key, e.key("w0")) {
			subWant = append(subWant, ev)
		}
	}
	sub.mustUntil(subWant[len(subWant)-1].Revision)
	wantEvents(t, sub.name, sortBatches(sub.events), subWant)
}

// testSlowWatcher: a watcher that does not read while many revisions are
// written (more than 1000, etcd's catch-up batch) still gets every event
// exactly once, in order, as does a watch opened afterwards that replays
// them all.
func testSlowWatcher(e *env) {
	t := e.t
	const writers, perWriter = 8, 140 // 1120 revisions
	s, ws := e.store(), e.store()
	_, start := e.list(s, e.prefix)
	ctx, _ := e.watchCtx()
	slow := e.watch(ctx, ws, e.prefix, start) // not read until the end

	var (
		mu   sync.Mutex
		want []kvdriver.Event
		wg   sync.WaitGroup
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := e.ctx()
			for i := 0; i < perWriter; i++ {
				k := e.key(fmt.Sprintf("w%d", w), fmt.Sprint(i%5))
				v := []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
				rev, err := s.Put(ctx, k, v)
				if err != nil {
					t.Errorf("writer %d: Put: %v", w, err)
					return
				}
				mu.Lock()
				want = append(want, putEv(k, v, rev))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	want = sortBatches(want)
	last := want[len(want)-1].Revision
	slow.mustUntil(last)
	wantEvents(t, slow.name+" (read only after the writes)", slow.events, want)
	replay := e.watch(ctx, ws, e.prefix, start)
	replay.mustUntil(last)
	wantEvents(t, replay.name+" (replay)", replay.events, want)
}
