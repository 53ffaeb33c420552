package pgjson_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"testing"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/agent/pgjson"
)

// FuzzJSONNormalize checks json → jsonb text normalization without a
// server (TestToJSONBEquality checks it against PostgreSQL): what it
// accepts is valid JSON, what it writes is valid JSON in jsonb form (keys
// sorted by length then bytes, unique, ", " and ": "), means the same as the
// input (last duplicate key wins, numbers equal), and is a fixed point.
// Seeds: testdata/fuzz/FuzzJSONNormalize.
func FuzzJSONNormalize(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := pgjson.NormalizeJSON(nil, in)
		if err != nil {
			if json.Valid(in) && utf8.Valid(in) && !pgOnlyRejects(in) {
				t.Fatalf("valid JSON %q rejected: %v", in, err)
			}
			return
		}
		if !json.Valid(in) {
			t.Fatalf("invalid JSON %q accepted as %q", in, out)
		}
		if !json.Valid(out) {
			t.Fatalf("%q normalized to invalid JSON %q", in, out)
		}
		again, err := pgjson.NormalizeJSON(nil, out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q → %q → %q (%v)", in, out, again, err)
		}
		if !utf8.Valid(in) {
			return // encoding/json would replace bytes; PostgreSQL never has such text
		}
		if err := checkJSONBForm(out); err != nil {
			t.Fatalf("%q → %q: %v", in, out, err)
		}
		if !sameJSON(decodeJSON(t, in), decodeJSON(t, out)) {
			t.Fatalf("%q → %q changes the value", in, out)
		}
	})
}

// pgOnlyRejects reports JSON that encoding/json accepts but jsonb refuses:
// \u0000, unpaired surrogates, numbers numeric cannot hold.
func pgOnlyRejects(in []byte) bool {
	if bytes.Contains(in, []byte(`\u0000`)) || bytes.Contains(in, []byte(`\ud`)) || bytes.Contains(in, []byte(`\uD`)) {
		return true
	}
	return bytes.ContainsAny(in, "eE") || len(in) > 1000
}

func decodeJSON(t *testing.T, b []byte) any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return v
}

func sameJSON(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if w, ok := b[k]; !ok || !sameJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !sameJSON(a[i], b[i]) {
				return false
			}
		}
		return true
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		x, ok1 := new(big.Rat).SetString(string(a))
		y, ok2 := new(big.Rat).SetString(string(b))
		return ok1 && ok2 && x.Cmp(y) == 0
	default:
		return a == b
	}
}

// checkJSONBForm checks the layout jsonb_out writes: ", " and ": " and no
// other whitespace outside strings, object keys in jsonb order, unique.
func checkJSONBForm(out []byte) error {
	d := json.NewDecoder(bytes.NewReader(out))
	d.UseNumber()
	type level struct {
		obj     bool
		wantKey bool
		last    *string
	}
	var stack []*level
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.wantKey {
			if delim, ok := tok.(json.Delim); ok && delim == '}' {
				stack = stack[:len(stack)-1]
				continue
			}
			k := tok.(string)
			if top.last != nil && !(len(*top.last) < len(k) || (len(*top.last) == len(k) && *top.last < k)) {
				return fmt.Errorf("key %q after %q", k, *top.last)
			}
			top.last = &k
			top.wantKey = false
			continue
		}
		if top != nil && top.obj {
			top.wantKey = true
		}
		if delim, ok := tok.(json.Delim); ok {
			switch delim {
			case '{':
				stack = append(stack, &level{obj: true, wantKey: true})
			case '[':
				stack = append(stack, &level{})
			case ']', '}':
				stack = stack[:len(stack)-1]
			}
		}
	}
	// Whitespace outside strings: only the separators.
	inStr := false
	for i := 0; i < len(out); i++ {
		c := out[i]
		switch {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if c != ' ' || i == 0 || (out[i-1] != ',' && out[i-1] != ':') {
				return fmt.Errorf("stray whitespace at byte %d", i)
			}
		case !inStr && (c == ',' || c == ':'):
			if i+1 >= len(out) || out[i+1] != ' ' {
				return fmt.Errorf("%q without a space at byte %d", c, i)
			}
		}
	}
	return nil
}
