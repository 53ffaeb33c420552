package kvtest

import (
	"errors"
	"fmt"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver"
)

// badKeys are keys every driver refuses with ErrInvalidKey; as prefixes
// too, except those with prefixOK (a trailing '/' is fine on a prefix).
func badKeys(e *env) []struct {
	name, key string
	prefixOK  bool
} {
	return []struct {
		name, key string
		prefixOK  bool
	}{
		{"empty", "", false},
		{"no leading slash", e.key("x")[1:], false},
		{"trailing slash", e.key("x") + "/", true},
		{"empty segment", e.prefix + "//x", false},
		{"invalid UTF-8", e.key("x\xff\xfe"), false},
		{"NUL", e.key("x\x00y"), false},
		{"too long", e.key(strings.Repeat("x", kvdriver.DefaultMaxKeyBytes)), false},
		{"dot segment", e.key(".", "x"), false},
		{"dot-dot segment", e.key("x", ".."), false},
	}
}

// testInvalidKeys: every class of bad key is refused by every call with
// ErrInvalidKey, and nothing is written or watched.
func testInvalidKeys(e *env) {
	t := e.t
	s := e.store()
	for _, b := range badKeys(e) {
		what := func(call string) string { return fmt.Sprintf("%s with %s key %q", call, b.name, truncate(b.key)) }
		_, err := s.Get(e.ctx(), b.key)
		e.wantErr(err, kvdriver.ErrInvalidKey, what("Get"))
		_, err = s.Put(e.ctx(), b.key, val(1))
		e.wantErr(err, kvdriver.ErrInvalidKey, what("Put"))
		_, err = s.Delete(e.ctx(), b.key)
		e.wantErr(err, kvdriver.ErrInvalidKey, what("Delete"))
		_, err = s.Apply(e.ctx(), []kvdriver.Op{kvdriver.Put(e.key("ok"), val(1)), kvdriver.Put(b.key, val(1))})
		e.wantErr(err, kvdriver.ErrInvalidKey, what("Apply"))
		if b.key != "" && err != nil && !strings.Contains(err.Error(), "key") {
			t.Errorf("%s: error %q does not name the problem", what("Apply"), err)
		}
		if b.prefixOK {
			continue
		}
		_, _, err = s.List(e.ctx(), b.key)
		e.wantErr(err, kvdriver.ErrInvalidKey, what("List"))

		ctx, cancel := e.watchCtx()
		w := e.watch(ctx, s, b.key, 0)
		if err := w.end(waitTimeout); !errors.Is(err, kvdriver.ErrInvalidKey) {
			t.Errorf("%s: watch ended with %v, want an error wrapping ErrInvalidKey", what("Watch"), err)
		}
		cancel()
	}
	// The root is a valid prefix but not a key.
	_, err := s.Put(e.ctx(), "/", val(1))
	e.wantErr(err, kvdriver.ErrInvalidKey, `Put("/")`)
	e.wantEmpty(s, e.prefix, "after refused keys")
	// A key with a dot inside a segment is fine.
	rev := e.put(s, e.key("a.b", "..c", ".d"), val(1))
	e.wantGet(s, e.key("a.b", "..c", ".d"), val(1), rev)
}

// testInvalidValues: values that are not one JSON document are refused
// with ErrInvalidValue by Put and Apply, and nothing is written.
func testInvalidValues(e *env) {
	s := e.store()
	k := e.key("v")
	for _, b := range []struct {
		name  string
		value []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"truncated", []byte(`{"a":`)},
		{"bare word", []byte(`hello`)},
		{"two documents", []byte(`{} {}`)},
		{"trailing garbage", []byte(`{"a":1}x`)},
		{"invalid UTF-8 string", []byte("\"\xff\"")},
		{"single quotes", []byte(`{'a':1}`)},
		{"whitespace only", []byte(" \n")},
	} {
		_, err := s.Put(e.ctx(), k, b.value)
		e.wantErr(err, kvdriver.ErrInvalidValue, fmt.Sprintf("Put of %s value %q", b.name, b.value))
		_, err = s.Apply(e.ctx(), []kvdriver.Op{kvdriver.Put(e.key("ok"), val(1)), kvdriver.Put(k, b.value)})
		e.wantErr(err, kvdriver.ErrInvalidValue, fmt.Sprintf("Apply with %s value %q", b.name, b.value))
	}
	e.wantEmpty(s, e.prefix, "after refused values")
	// A delete in a batch needs no value.
	e.put(s, k, val(1))
	e.apply(s, []kvdriver.Op{kvdriver.Delete(k)})
	e.wantNotFound(s, k, "after a batch delete")
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
