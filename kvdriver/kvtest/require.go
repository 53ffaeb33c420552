package kvtest

import (
	"github.com/bagger/lenkwerk/kvdriver"
)

// testRequire: a batch with a Require applies only while the required key
// is at the required revision (0: absent); otherwise Apply fails with
// ErrConflict, writes nothing and no watcher sees anything. A Require may
// share its key with a put of the same batch (compare-and-swap).
func testRequire(e *env) {
	s := e.store()
	k, data, absent := e.key("fence"), e.key("data"), e.key("absent")
	_, start := e.list(s, e.prefix)
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, e.store(), e.prefix, start)

	r1 := e.put(s, k, val(1))
	r2 := e.apply(s, []kvdriver.Op{kvdriver.Require(k, r1), kvdriver.Put(data, val(2))})
	e.wantGet(s, data, val(2), r2)

	conflict := func(what string, ops ...kvdriver.Op) {
		e.t.Helper()
		_, err := s.Apply(e.ctx(), ops)
		e.wantErr(err, kvdriver.ErrConflict, what)
	}
	conflict("Apply requiring a revision the key is not at", kvdriver.Require(k, r2), kvdriver.Put(data, val(3)), kvdriver.Delete(k))
	e.wantGet(s, data, val(2), r2)
	e.wantGet(s, k, val(1), r1)

	r3 := e.apply(s, []kvdriver.Op{kvdriver.Require(absent, 0), kvdriver.Put(data, val(4))})
	conflict("Apply requiring revision 0 (absent) of a present key", kvdriver.Require(k, 0), kvdriver.Put(data, val(5)))
	conflict("Apply requiring a revision of an absent key", kvdriver.Require(absent, r1), kvdriver.Put(data, val(5)))
	e.wantGet(s, data, val(4), r3)

	// Compare-and-swap of the required key itself.
	r4 := e.apply(s, []kvdriver.Op{kvdriver.Put(data, val(6)), kvdriver.Require(k, r1), kvdriver.Put(k, val(7))})
	e.wantGet(s, k, val(7), r4)
	conflict("Apply requiring the revision a key had before the last swap", kvdriver.Require(k, r1), kvdriver.Put(k, val(8)))
	r5 := e.apply(s, []kvdriver.Op{kvdriver.Require(absent, 0), kvdriver.Put(absent, val(9))})
	conflict("Apply creating a key only if absent, when present", kvdriver.Require(absent, 0), kvdriver.Put(absent, val(10)))
	e.wantGet(s, k, val(7), r4)
	e.wantGet(s, absent, val(9), r5)

	_, err := s.Apply(e.ctx(), []kvdriver.Op{kvdriver.Require(k, r4), kvdriver.Require(k, r4), kvdriver.Put(data, val(11))})
	e.wantErr(err, kvdriver.ErrInvalidBatch, "Apply with two Requires of one key")

	// The watcher sees exactly the batches that applied.
	w.mustUntil(r5)
	want := []kvdriver.Event{
		{Type: kvdriver.OpPut, Key: k, Revision: r1},
		{Type: kvdriver.OpPut, Key: data, Revision: r2},
		{Type: kvdriver.OpPut, Key: data, Revision: r3},
		{Type: kvdriver.OpPut, Key: data, Revision: r4},
		{Type: kvdriver.OpPut, Key: k, Revision: r4},
		{Type: kvdriver.OpPut, Key: absent, Revision: r5},
	}
	got := w.events
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].Type == want[i].Type && got[i].Key == want[i].Key && got[i].Revision == want[i].Revision
	}
	if !ok {
		e.t.Errorf("%s: got %s, want %s: a failed Require must write nothing and make no event", w.name, fmtEvents(got), fmtEvents(want))
	}
}
