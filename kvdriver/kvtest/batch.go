package kvtest

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/bagger/lenkwerk/kvdriver"
)

// testBatchAtomicity: while batches are applied (with single writes
// interleaved), a watcher gets each batch's events in one response with one
// revision, the revision Apply returned, and a concurrent List never sees a
// batch half-applied.
func testBatchAtomicity(e *env) {
	t := e.t
	const width, batches = 6, 20
	s, ws, ls := e.store(), e.store(), e.store()
	_, start := e.list(s, e.prefix)
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, ws, e.prefix, start)

	type gen struct {
		Gen int `json:"gen"`
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bgctx := e.ctx()

	// Drain the watch live while the batches are applied.
	watchDone := make(chan error, 1)
	lastRev := make(chan int64, 1)
	bg.Add(1)
	go func() {
		defer bg.Done()
		watchDone <- w.until(<-lastRev)
	}()

	// A lister that checks every snapshot it sees: all batch keys of one
	// generation, with one ModRevision, and the moving key d<gen> alone.
	bg.Add(1)
	go func() {
		defer bg.Done()
		// At least one snapshot, even if the batches were all done first.
		for {
			kvs, _, err := ls.List(bgctx, e.key("b"))
			if err != nil {
				t.Errorf("List during batches: %v", err)
				return
			}
			if len(kvs) == 0 {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			var g gen
			if err := json.Unmarshal(kvs[0].Value, &g); err != nil {
				t.Errorf("List during batches: %q = %s: %v", kvs[0].Key, kvs[0].Value, err)
				return
			}
			want := map[string]bool{e.key("b", fmt.Sprintf("d%03d", g.Gen)): true}
			for i := 0; i < width; i++ {
				want[e.key("b", fmt.Sprint(i))] = true
			}
			for _, kv := range kvs {
				var gk gen
				_ = json.Unmarshal(kv.Value, &gk)
				if gk.Gen != g.Gen || kv.ModRevision != kvs[0].ModRevision || !want[kv.Key] {
					t.Errorf("List during batches saw a half-applied batch: %q = %s at revision %d beside %q = %s at revision %d",
						kvs[0].Key, kvs[0].Value, kvs[0].ModRevision, kv.Key, kv.Value, kv.ModRevision)
					return
				}
			}
			if len(kvs) != len(want) {
				t.Errorf("List during batches saw %d keys %q, want %d (generation %d)", len(kvs), keysOf(kvs), len(want), g.Gen)
				return
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()

	// Single writes interleaved with the batches, outside the batch keys.
	singles := make(chan []kvdriver.Event, 1)
	bg.Add(1)
	go func() {
		defer bg.Done()
		var evs []kvdriver.Event
		defer func() { singles <- evs }()
		for i := 0; i < 500; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := e.key("single", fmt.Sprint(i%3))
			rev, err := s.Put(bgctx, k, val(i))
			if err != nil {
				t.Errorf("Put during batches: %v", err)
				return
			}
			evs = append(evs, putEv(k, val(i), rev))
		}
	}()

	var want []kvdriver.Event
	batchRevs := map[int64]int{}
	for g := 0; g < batches; g++ {
		v := []byte(fmt.Sprintf(`{"gen":%d}`, g))
		var ops []kvdriver.Op
		for i := 0; i < width; i++ {
			ops = append(ops, kvdriver.Put(e.key("b", fmt.Sprint(i)), v))
		}
		ops = append(ops, kvdriver.Put(e.key("b", fmt.Sprintf("d%03d", g)), v))
		if g > 0 {
			ops = append(ops, kvdriver.Delete(e.key("b", fmt.Sprintf("d%03d", g-1))))
		}
		rev, err := s.Apply(e.ctx(), ops)
		if err != nil {
			close(stop)
			lastRev <- 0
			bg.Wait()
			t.Fatalf("Apply batch %d: %v", g, err)
		}
		batchRevs[rev] = len(ops)
		for _, op := range ops {
			want = append(want, kvdriver.Event{Type: op.Type, Key: op.Key, Value: op.Value, Revision: rev})
		}
	}
	close(stop)
	evs := <-singles
	want = append(want, evs...)
	want = sortBatches(want)
	lastRev <- want[len(want)-1].Revision
	bg.Wait()
	if err := <-watchDone; err != nil {
		t.Fatal(err)
	}
	wantEvents(t, w.name, sortBatches(w.events), want)

	// Each batch revision's events in one response, all of them.
	for i := 0; i < len(w.events); {
		rev, resp := w.events[i].Revision, w.respOf[i]
		j := i
		for j < len(w.events) && w.events[j].Revision == rev {
			if w.respOf[j] != resp {
				t.Errorf("%s: batch at revision %d split across responses %d and %d", w.name, rev, resp, w.respOf[j])
			}
			j++
		}
		if n, ok := batchRevs[rev]; ok && j-i != n {
			t.Errorf("%s: batch at revision %d delivered %d events, want %d", w.name, rev, j-i, n)
		}
		i = j
	}
}

// badOp is one operation a batch must be refused for.
type badOp struct {
	name string
	op   func(e *env) kvdriver.Op
	want error
}

func badOps() []badOp {
	return []badOp{
		{"empty key", func(e *env) kvdriver.Op { return kvdriver.Put("", val(1)) }, kvdriver.ErrInvalidKey},
		{"relative key", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x")[1:], val(1)) }, kvdriver.ErrInvalidKey},
		{"trailing slash", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x")+"/", val(1)) }, kvdriver.ErrInvalidKey},
		{"empty segment", func(e *env) kvdriver.Op { return kvdriver.Delete(e.prefix + "//x") }, kvdriver.ErrInvalidKey},
		{"invalid UTF-8", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x\xff"), val(1)) }, kvdriver.ErrInvalidKey},
		{"NUL in key", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x\x00y"), val(1)) }, kvdriver.ErrInvalidKey},
		{"invalid JSON", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x"), []byte(`{"a":`)) }, kvdriver.ErrInvalidValue},
		{"empty value", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("x"), nil) }, kvdriver.ErrInvalidValue},
		{"unknown op type", func(e *env) kvdriver.Op { return kvdriver.Op{Type: 99, Key: e.key("x"), Value: val(1)} }, kvdriver.ErrInvalidBatch},
		{"zero op type", func(e *env) kvdriver.Op { return kvdriver.Op{Key: e.key("x"), Value: val(1)} }, kvdriver.ErrInvalidBatch},
		{"duplicate key", func(e *env) kvdriver.Op { return kvdriver.Put(e.key("ok", "1"), val(2)) }, kvdriver.ErrInvalidBatch},
	}
}

// testBatchAllOrNothing: a batch with one bad operation, or one Require
// that does not hold, first, in the middle or last, returns the right
// error and writes nothing, not even its good operations; no watcher sees
// anything.
func testBatchAllOrNothing(e *env) {
	t := e.t
	s := e.store()
	// A key the batches delete, so a half-applied batch shows as a delete.
	seed := e.put(s, e.key("ok", "seed"), val(0))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, e.store(), e.prefix, seed)
	good := []kvdriver.Op{
		kvdriver.Put(e.key("ok", "1"), val(1)),
		kvdriver.Delete(e.key("ok", "seed")),
		kvdriver.Put(e.key("ok", "2"), val(2)),
	}
	for _, b := range badOps() {
		for pos := 0; pos <= len(good); pos++ {
			if b.name == "duplicate key" && pos == 0 {
				continue // the duplicate has to come after the original
			}
			ops := append(append(append([]kvdriver.Op(nil), good[:pos]...), b.op(e)), good[pos:]...)
			_, err := s.Apply(e.ctx(), ops)
			e.wantErr(err, b.want, fmt.Sprintf("Apply with %s at position %d", b.name, pos))
			e.wantNotFound(s, e.key("ok", "1"), fmt.Sprintf("Apply with %s at position %d", b.name, pos))
			e.wantGet(s, e.key("ok", "seed"), val(0), seed)
		}
	}
	// A Require that does not hold fails the whole batch wherever it
	// stands: the driver's own all or nothing, past the checks of Store.
	for pos := 0; pos <= len(good); pos++ {
		ops := append(append(append([]kvdriver.Op(nil), good[:pos]...), kvdriver.Require(e.key("absent"), seed)), good[pos:]...)
		_, err := s.Apply(e.ctx(), ops)
		e.wantErr(err, kvdriver.ErrConflict, fmt.Sprintf("Apply with a failing Require at position %d", pos))
		e.wantNotFound(s, e.key("ok", "1"), fmt.Sprintf("Apply with a failing Require at position %d", pos))
		e.wantGet(s, e.key("ok", "seed"), val(0), seed)
	}
	// Nothing reached a watcher either.
	mark := e.put(s, e.key("mark"), val(9))
	w.mustUntil(mark)
	wantEvents(t, w.name+" after refused batches", w.events, []kvdriver.Event{putEv(e.key("mark"), val(9), mark)})
}

// testInvalidBatches: duplicate keys and unknown op types, alone.
func testInvalidBatches(e *env) {
	s := e.store()
	k := e.key("k")
	cases := []struct {
		name string
		ops  []kvdriver.Op
	}{
		{"same key put twice", []kvdriver.Op{kvdriver.Put(k, val(1)), kvdriver.Put(k, val(2))}},
		{"put and delete of one key", []kvdriver.Op{kvdriver.Put(k, val(1)), kvdriver.Delete(k)}},
		{"delete twice", []kvdriver.Op{kvdriver.Delete(k), kvdriver.Delete(k)}},
		{"unknown op type", []kvdriver.Op{{Type: kvdriver.OpType(7), Key: k, Value: val(1)}}},
		{"zero op type", []kvdriver.Op{{Key: k, Value: val(1)}}},
	}
	for _, c := range cases {
		_, err := s.Apply(e.ctx(), c.ops)
		e.wantErr(err, kvdriver.ErrInvalidBatch, "Apply with "+c.name)
		e.wantNotFound(s, k, "Apply with "+c.name)
	}
}
