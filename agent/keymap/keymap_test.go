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

func TestTemplatesAndPrefixes(t *testing.T) {
	m, err := New("/p", map[string]string{"s.t": "/{a}/{b}"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tm := range m.Templates() {
		names = append(names, tm.Table())
	}
	if got, want := len(names), len(DefaultTemplates())+1; got != want {
		t.Fatalf("%d templates, want %d", got, want)
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Fatalf("templates not sorted: %v", names)
		}
	}
	st, err := m.Table("s", "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.String(); got != "/p/{a}/{b}" {
		t.Fatalf("String() = %q", got)
	}
	if got := st.ListPrefix(); got != "/p" {
		t.Fatalf("ListPrefix() = %q", got)
	}
	bare, err := New("", map[string]string{"s.t": "/{a}"})
	if err != nil {
		t.Fatal(err)
	}
	bt, _ := bare.Table("s", "t", nil)
	if got := bt.ListPrefix(); got != "/" {
		t.Fatalf("ListPrefix() of a template starting with a column = %q, want /", got)
	}
	def, err := m.Table("other", "x/y", []string{"k1", "k2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := def.String(); got != "/p/other/x%2Fy/{k1}/{k2}" {
		t.Fatalf("default template %q", got)
	}
	if m.Prefix() != "/p" {
		t.Fatalf("Prefix() = %q", m.Prefix())
	}
}
