package keymap

import (
	"encoding/json"
	"testing"
)

func TestDefaultsAndKeys(t *testing.T) {
	m, err := New("/bagger", nil)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := m.Table("storage", "index_field", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tm.Key(map[string]json.RawMessage{"index_id": json.RawMessage(`3`), "id": json.RawMessage(`"a/b%c"`)})
	if err != nil {
		t.Fatal(err)
	}
	if want := "/bagger/Index/3/a%2Fb%25c"; k != want {
		t.Fatalf("key %q, want %q", k, want)
	}
	if !tm.Match(k) || tm.Match("/bagger/Index/3") {
		t.Fatalf("Match wrong for %q", k)
	}
	if _, err := tm.Key(map[string]json.RawMessage{"index_id": json.RawMessage(`null`), "id": json.RawMessage(`1`)}); err == nil {
		t.Fatal("NULL key column accepted")
	}
	if _, err := New("", map[string]string{"a.b": "/Index/{x}"}); err == nil {
		t.Fatal("ambiguous template accepted")
	}
}

func TestEscapeRoundTrip(t *testing.T) {
	for _, s := range []string{"", "a", "a/b", "%", "%2F", "ünï cödé", "/%/"} {
		got, err := UnescapeSegment(EscapeSegment(s))
		if err != nil || got != s {
			t.Fatalf("round trip of %q: %q, %v", s, got, err)
		}
	}
}
