package keymap

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

func TestDefaultsAndKeys(t *testing.T) {
	tm := mustTemplate(t, "/bagger", nil, "storage", "index_field", nil)
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
	for _, s := range []string{"", "a", "a/b", "%", "%2F", "ünï cödé", "/%/", ".", "..", "...", "%2E", "%2E%2E", "a.", ".a", "./", "/..", ".lenkwerk", "%2Elenkwerk", ".lenkwerkx"} {
		esc := EscapeSegment(s)
		got, err := UnescapeSegment(esc)
		if err != nil || got != s {
			t.Fatalf("round trip of %q: %q, %v", s, got, err)
		}
		if err := kvdriver.ValidateKey("/x/" + esc); s != "" && err != nil {
			t.Errorf("EscapeSegment(%q) = %q: not a valid key segment: %v", s, esc, err)
		}
	}
	for s, want := range map[string]string{".": "%2E", "..": "%2E%2E", "...": "...", "a.b": "a.b", ".lenkwerk": "%2Elenkwerk", ".lenkwerk2": ".lenkwerk2"} {
		if got := EscapeSegment(s); got != want {
			t.Errorf("EscapeSegment(%q) = %q, want %q", s, got, want)
		}
	}
	// Only what EscapeSegment produces unescapes.
	for _, s := range []string{"%2E.", "a%2E", "%2E%2E%2E", "%2e", "%"} {
		if got, err := UnescapeSegment(s); err == nil {
			t.Errorf("UnescapeSegment(%q) = %q, want an error", s, got)
		}
	}
}

func TestDotSegments(t *testing.T) {
	tm := mustTemplate(t, "", nil, "storage", "config", []string{"key"})
	for v, want := range map[string]string{`"."`: "/Config/%2E", `".."`: "/Config/%2E%2E", `"..."`: "/Config/..."} {
		key, err := tm.Key(map[string]json.RawMessage{"key": json.RawMessage(v)})
		if err != nil || key != want {
			t.Errorf("key of %s: %q, %v; want %q", v, key, err, want)
		}
		if err := kvdriver.ValidateKey(key); err != nil {
			t.Errorf("key of %s: %v", v, err)
		}
	}
	for _, src := range []string{"/./{a}", "/x/../{a}", "/.lenkwerk/{a}", "/x/.lenkwerk"} {
		if _, err := New("", map[string]string{"s.t": src}); err == nil {
			t.Errorf("template %q accepted, want an error (dot or reserved segment)", src)
		}
	}
}

// A row cannot write among the agents' own keys through a template whose
// first segment is a column: its value .lenkwerk is escaped.
func TestReservedSegmentEscaped(t *testing.T) {
	for _, prefix := range []string{"", "/p"} {
		tm := mustTemplate(t, prefix, map[string]string{"storage.config": "/{key}"}, "storage", "config", []string{"key"})
		key, err := tm.Key(map[string]json.RawMessage{"key": json.RawMessage(`".lenkwerk"`)})
		if want := prefix + "/%2Elenkwerk"; err != nil || key != want {
			t.Errorf("prefix %q: key of .lenkwerk: %q, %v; want %q", prefix, key, err, want)
		}
		if tm.Match(prefix + "/.lenkwerk") {
			t.Errorf("prefix %q: the template matches the reserved key %s/.lenkwerk (an initial sync would delete the agents' keys)", prefix, prefix)
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

// Key takes a JSON string's text without decoding it when it has no
// escapes; the key must be the one json.Unmarshal's decoding gives, and a
// raw control character (invalid JSON) must still be refused.
func TestKeyStringFastPath(t *testing.T) {
	tmpl := mustTemplate(t, "", map[string]string{"s.t": "/T/{c}"}, "s", "t", []string{"c"})
	for _, s := range []string{"a", "a/b", "ä 𝄞", "%2F", ".", "..", `q"uote`, `back\slash`, "tab\tx", "x\u2028y", "<&>"} {
		raw, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tmpl.Key(map[string]json.RawMessage{"c": raw})
		if err != nil {
			t.Errorf("Key(%s): %v", raw, err)
			continue
		}
		if want := "/T/" + EscapeSegment(s); got != want {
			t.Errorf("Key(%s) = %q, want %q", raw, got, want)
		}
	}
	if k, err := tmpl.Key(map[string]json.RawMessage{"c": json.RawMessage("\"a\x01b\"")}); err == nil {
		t.Errorf("Key of a string with a raw control character = %q, want an error", k)
	}
}

// A trailing '/' on the prefix means the same as without it: "/bagger/"
// builds the keys "/bagger" builds, and "/" those of no prefix.
func TestCleanPrefix(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", "/bagger": "/bagger", "/bagger/": "/bagger", "/a/b/": "/a/b"} {
		if got, err := CleanPrefix(in); err != nil || got != want {
			t.Errorf("CleanPrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
		m, err := New(in, nil)
		if err != nil {
			t.Fatalf("New(%q): %v", in, err)
		}
		if m.Prefix() != want {
			t.Errorf("New(%q).Prefix() = %q, want %q", in, m.Prefix(), want)
		}
		tm, err := m.Table("storage", "config", nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := tm.Key(map[string]json.RawMessage{"key": json.RawMessage(`"a"`)})
		if err != nil {
			t.Fatal(err)
		}
		if k != want+"/Config/a" {
			t.Errorf("New(%q): key %q, want %q", in, k, want+"/Config/a")
		}
	}
	if _, err := CleanPrefix("/a/.lenkwerk/"); err == nil {
		t.Error(`CleanPrefix("/a/.lenkwerk/") succeeded, want the reserved segment refused`)
	}
}

func TestCheckPrefix(t *testing.T) {
	for prefix, ok := range map[string]bool{
		"": true, "/a": true, "/bagger/prod": true, "/a.b/.c/..d/lenkwerk": true,
		"/": true, "/a/": true, "/bagger/prod/": true,
		"a": false, "a/": false, "//": false, "/a//": false, "//a": false, "/a//b": false, "/.": false, "/a/..": false,
		"/a\xff": false, "/a\x00": false, "/" + strings.Repeat("a", 1024): false,
		"/.lenkwerk": false, "/.lenkwerk/x": false, "/a/.lenkwerk": false, "/a/.lenkwerk/b": false,
	} {
		if err := CheckPrefix(prefix); (err == nil) != ok {
			t.Errorf("CheckPrefix(%q) = %v, want ok %v", prefix, err, ok)
		}
		if _, err := New(prefix, nil); (err == nil) != ok {
			t.Errorf("New(%q) = %v, want ok %v", prefix, err, ok)
		}
	}
}

// keyValuesSeeds are JSON values as to_jsonb gives them (and some it never
// gives), for the key of two columns.
var keyValuesSeeds = []string{
	`"a"`, `"a/b%c"`, `"ä 𝄞"`, `"."`, `".."`, `".lenkwerk"`, `"q\"uote"`, `"back\\slash"`, `"tab\tx"`, `"\u00e4"`, `"x\u2028y"`,
	`""`, `"\u0000"`, "\"a\x01b\"", `"` + "\xff" + `"`, `"unterminated`,
	`0`, `-1`, `3`, `1.50`, `1e+30`, `-0.000001`, `9223372036854775807`, `12345678901234567890.123`,
	`true`, `false`, `null`, ``, ` `, ` "padded" `,
	`"2024-02-29T12:34:56.789+00:00"`, `"2024-02-29T12:34:56"`, `"2024-02-29"`, `"12:00:00+02"`, `"1 day 02:03:04"`,
	`"550e8400-e29b-41d4-a716-446655440000"`, `"\\x00ff"`, `"192.168.0.1/24"`, `"{1,2}"`,
	`[1, "a"]`, `{"a": 1}`, `{"a/b": "%"}`,
}

// KeyValues is Key without the row map: for every pair of values it gives
// the same key, or fails where Key fails, with the same error.
func TestKeyValuesEqualsKey(t *testing.T) {
	for _, prefix := range []string{"", "/p"} {
		tm := mustTemplate(t, prefix, map[string]string{"s.t": "/T/{a}/x/{b}"}, "s", "t", nil)
		for _, a := range keyValuesSeeds {
			for _, b := range keyValuesSeeds {
				checkKeyValues(t, tm, a, b)
			}
		}
		// nil is a NULL column, as a missing value in pgx's raw values.
		if k, err := tm.KeyValues([]json.RawMessage{json.RawMessage(`1`), nil}); err == nil || !strings.Contains(err.Error(), "is NULL") {
			t.Errorf("KeyValues with a nil value = %q, %v; want the NULL error", k, err)
		}
		if k, err := tm.KeyValues([]json.RawMessage{json.RawMessage(`1`)}); err == nil {
			t.Errorf("KeyValues with one value of two = %q, want an error", k)
		}
	}
	single := mustTemplate(t, "/p", nil, "storage", "servermap", nil)
	if k, err := single.KeyValues(nil); err != nil || k != "/p/Servermap" {
		t.Errorf("KeyValues of a single-key template = %q, %v", k, err)
	}
}

// mustTemplate is the template of schema.table (primary key pk) of a
// mapper New(prefix, templates); an error fails the test.
func mustTemplate(t testing.TB, prefix string, templates map[string]string, schema, table string, pk []string) *Template {
	t.Helper()
	m, err := New(prefix, templates)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := m.Table(schema, table, pk)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func checkKeyValues(t *testing.T, tm *Template, a, b string) {
	t.Helper()
	want, wantErr := tm.Key(map[string]json.RawMessage{"a": json.RawMessage(a), "b": json.RawMessage(b)})
	got, gotErr := tm.KeyValues([]json.RawMessage{json.RawMessage(a), json.RawMessage(b)})
	if got != want || (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Errorf("values %q, %q: KeyValues = %q, %v; Key = %q, %v", a, b, got, gotErr, want, wantErr)
	}
}

func FuzzKeyValues(f *testing.F) {
	for _, s := range keyValuesSeeds {
		f.Add(s, `"k"`)
	}
	tm := mustTemplate(f, "/p", map[string]string{"s.t": "/T/{a}/x/{b}"}, "s", "t", nil)
	f.Fuzz(func(t *testing.T, a, b string) { checkKeyValues(t, tm, a, b) })
}
