package kvtest

import (
	"errors"
	"fmt"
	"slices"

	"github.com/bagger/lenkwerk/kvdriver"
)

// testFirstListRevision: the revision List returns is never 0, even
// before anything is written (a fresh server: etcd starts at revision 1),
// because Watch takes afterRev 0 for "from now" and would miss a write
// made between the List and the Watch.
func testFirstListRevision(e *env) {
	s, s2 := e.store(), e.store()
	kvs, rev := e.list(s, e.prefix)
	if len(kvs) != 0 {
		e.t.Fatalf("List(%q) of a new run's prefix = %q, want nothing", e.prefix, keysOf(kvs))
	}
	if rev < 1 {
		e.t.Errorf("List(%q) = revision %d, want >= 1: a watch from it would start from now, not after the listing (start an empty store at revision 1, as etcd does)", e.prefix, rev)
	}
	// A write between List and Watch is seen.
	r := e.put(s2, e.key("k"), val(1))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, s, e.prefix, rev)
	w.mustUntil(r)
	wantEvents(e.t, w.name, w.events, []kvdriver.Event{putEv(e.key("k"), val(1), r)})
}

// testCRUD: Get, Put, Delete, not-found and revisions.
func testCRUD(e *env) {
	t := e.t
	s := e.store()
	k := e.key("a")

	e.wantNotFound(s, k, "before any Put")
	r1 := e.put(s, k, val(1))
	if r1 <= 0 {
		t.Errorf("Put returned revision %d, want > 0", r1)
	}
	e.wantGet(s, k, val(1), r1)

	r2 := e.put(s, k, []byte(`{"b": [1, 2, {"c": null}], "s": "ü\u00e9"}`))
	if r2 <= r1 {
		t.Errorf("second Put returned revision %d, want > %d", r2, r1)
	}
	e.wantGet(s, k, []byte(`{"b":[1,2,{"c":null}],"s":"üé"}`), r2)

	// Any JSON document is a value, not only objects.
	for i, v := range []string{`"text"`, `42`, `true`, `null`, `[]`} {
		kk := e.key("scalar", string(rune('a'+i)))
		rev := e.put(s, kk, []byte(v))
		e.wantGet(s, kk, []byte(v), rev)
	}

	// Another connection sees the write.
	s2 := e.store()
	e.wantGet(s2, k, []byte(`{"b":[1,2,{"c":null}],"s":"üé"}`), r2)

	r3 := e.del(s, k)
	if r3 <= r2 {
		t.Errorf("Delete returned revision %d, want > %d", r3, r2)
	}
	e.wantNotFound(s, k, "after Delete")
	e.wantNotFound(s2, k, "after Delete, on another store")

	// Deleting an absent key is not an error and creates no revision.
	wctx, _ := e.watchCtx()
	w := e.watch(wctx, s2, e.key("a"), r3)
	if _, err := s.Delete(e.ctx(), k); err != nil {
		t.Errorf("Delete of an absent key: %v, want nil", err)
	}
	if _, err := s.Delete(e.ctx(), e.key("never")); err != nil {
		t.Errorf("Delete of a never-written key: %v, want nil", err)
	}
	r4 := e.put(s, k, val(4))
	w.mustUntil(r4)
	wantEvents(t, "watch over the absent deletes", w.events, []kvdriver.Event{putEv(k, val(4), r4)})

	// A parent and a child are independent keys.
	child := e.key("a", "child")
	rc := e.put(s, child, val(5))
	e.wantGet(s, child, val(5), rc)
	e.del(s, k)
	e.wantGet(s, child, val(5), rc)
	e.wantNotFound(s, k, "parent deleted, child kept")

	kv, err := s.Get(e.ctx(), e.key("missing", "deep"))
	if !errors.Is(err, kvdriver.ErrNotFound) {
		t.Errorf("Get of a missing key = (%+v, %v), want ErrNotFound", kv, err)
	}
}

// testPrefixIsolation: prefixes are path prefixes in List and Watch.
func testPrefixIsolation(e *env) {
	t := e.t
	s := e.store()
	names := []string{"Index", "Index/1", "Index/1/2", "Index/10", "Index/10/1", "Index1", "IndexField", "IndexField/1", "Inde", "Index/2"}
	_, start := e.list(s, e.prefix)
	revs := map[string]int64{}
	for i, n := range names {
		revs[n] = e.put(s, e.key(n), val(i))
	}
	cases := []struct {
		prefix string
		want   []string
	}{
		{"Index", []string{"Index", "Index/1", "Index/1/2", "Index/10", "Index/10/1", "Index/2"}},
		{"Index/1", []string{"Index/1", "Index/1/2"}},
		{"Index/10", []string{"Index/10", "Index/10/1"}},
		{"IndexField", []string{"IndexField", "IndexField/1"}},
		{"Index/1/2", []string{"Index/1/2"}},
		{"Index/3", nil},
		{"Ind", nil},
	}
	for _, c := range cases {
		kvs, _ := e.list(s, e.key(c.prefix))
		var want []string
		for _, n := range c.want {
			want = append(want, e.key(n))
		}
		if got := keysOf(kvs); !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", e.key(c.prefix), got, want)
		}
		for _, kv := range kvs {
			if rel := kv.Key[len(e.prefix)+1:]; kv.ModRevision != revs[rel] {
				t.Errorf("List(%q): %q has ModRevision %d, want %d", e.key(c.prefix), kv.Key, kv.ModRevision, revs[rel])
			}
		}
	}
	all, _ := e.list(s, e.prefix)
	if len(all) != len(names) || !slices.IsSorted(keysOf(all)) {
		t.Errorf("List(%q) = %q, want all %d keys sorted", e.prefix, keysOf(all), len(names))
	}

	// Watches filter the same way, replaying from before the puts. A
	// write inside the prefix tells when the watch is current.
	var written []kvdriver.Event
	for i, n := range names {
		written = append(written, putEv(e.key(n), val(i), revs[n]))
	}
	for i, c := range cases {
		ctx, cancel := e.watchCtx()
		w := e.watch(ctx, s, e.key(c.prefix), start)
		mark := e.key(c.prefix, fmt.Sprintf("zz-mark-%d", i))
		rm := e.put(s, mark, val(-i))
		written = append(written, putEv(mark, val(-i), rm))
		w.mustUntil(rm)
		var want []kvdriver.Event
		for _, ev := range written {
			if kvdriver.InPrefix(ev.Key, e.key(c.prefix)) {
				want = append(want, ev)
			}
		}
		wantEvents(t, w.name, w.events, want)
		cancel()
	}
}

// testTrailingSlashPrefix: a prefix with one trailing '/' means what it
// means without it (every key at or below it), for List and Watch, as
// etcdctl users type it; "/Index/" holds "/Index" itself. Two trailing
// slashes are an empty segment and are refused.
func testTrailingSlashPrefix(e *env) {
	t := e.t
	s := e.store()
	names := []string{"Index", "Index/1", "Index/1/2", "Index1", "IndexField/1"}
	_, start := e.list(s, e.prefix)
	var written []kvdriver.Event
	for i, n := range names {
		written = append(written, putEv(e.key(n), val(i), e.put(s, e.key(n), val(i))))
	}
	for _, p := range []string{"Index", "Index/1", "IndexField", "Nothing"} {
		plain, slash := e.key(p), e.key(p)+"/"
		want, _ := e.list(s, plain)
		got, rev := e.list(s, slash)
		if !slices.Equal(keysOf(got), keysOf(want)) {
			t.Errorf("List(%q) = %q, want %q as List(%q)", slash, keysOf(got), keysOf(want), plain)
		}
		if rev < 1 {
			t.Errorf("List(%q) revision %d, want at least 1", slash, rev)
		}

		ctx, cancel := e.watchCtx()
		w := e.watch(ctx, s, slash, start)
		mark := e.key(p, "zz-mark")
		rm := e.put(s, mark, val(-1))
		written = append(written, putEv(mark, val(-1), rm))
		w.mustUntil(rm)
		var wantEv []kvdriver.Event
		for _, ev := range written {
			if kvdriver.InPrefix(ev.Key, plain) {
				wantEv = append(wantEv, ev)
			}
		}
		wantEvents(t, w.name, w.events, wantEv)
		cancel()
	}
	// The root stays the root.
	all, _ := e.list(s, "/")
	if len(all) < len(names) {
		t.Errorf("List(\"/\") has %d keys, want at least %d", len(all), len(names))
	}
	bad := e.key("Index") + "//"
	_, _, err := s.List(e.ctx(), bad)
	e.wantErr(err, kvdriver.ErrInvalidKey, fmt.Sprintf("List(%q)", bad))
	ctx, cancel := e.watchCtx()
	defer cancel()
	if err := e.watch(ctx, s, bad, 0).end(waitTimeout); !errors.Is(err, kvdriver.ErrInvalidKey) {
		t.Errorf("Watch(%q) ended with %v, want an error wrapping ErrInvalidKey", bad, err)
	}
}

// testListRevision: a watch from List's revision continues exactly where
// the listing ends, including writes made between List and Watch.
func testListRevision(e *env) {
	t := e.t
	s, s2 := e.store(), e.store()
	var maxMod int64
	for i := 0; i < 5; i++ {
		r := e.put(s, e.key("k", string(rune('a'+i))), val(i))
		maxMod = max(maxMod, r)
	}
	e.del(s, e.key("k", "a"))
	kvs, rev := e.list(s2, e.key("k"))
	if len(kvs) != 4 {
		t.Fatalf("List = %q, want 4 keys", keysOf(kvs))
	}
	for _, kv := range kvs {
		if kv.ModRevision > rev {
			t.Errorf("List revision %d is below %q's ModRevision %d", rev, kv.Key, kv.ModRevision)
		}
	}
	if rev < maxMod {
		t.Errorf("List revision %d is below the last Put's revision %d", rev, maxMod)
	}
	// Writes after the listing, before the watch is opened.
	ra := e.put(s, e.key("k", "b"), val(10))
	rb := e.del(s, e.key("k", "c"))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, s2, e.key("k"), rev)
	rc := e.put(s, e.key("k", "f"), val(11))
	w.mustUntil(rc)
	wantEvents(t, w.name, w.events, []kvdriver.Event{
		putEv(e.key("k", "b"), val(10), ra),
		delEv(e.key("k", "c"), rb),
		putEv(e.key("k", "f"), val(11), rc),
	})

	// An empty prefix lists nothing, with a revision to watch from.
	empty, erev := e.list(s2, e.key("none"))
	if len(empty) != 0 || erev < rc {
		t.Errorf("List of an empty prefix = (%d keys, rev %d), want (0, >= %d)", len(empty), erev, rc)
	}
	w2 := e.watch(ctx, s2, e.key("none"), erev)
	rn := e.put(s, e.key("none", "x"), val(12))
	w2.mustUntil(rn)
	wantEvents(t, w2.name, w2.events, []kvdriver.Event{putEv(e.key("none", "x"), val(12), rn)})
}
