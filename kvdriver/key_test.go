package kvdriver_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/kvdriver"
)

func TestValidateKey(t *testing.T) {
	long := "/" + strings.Repeat("k", kvdriver.DefaultMaxKeyBytes-1)
	for _, c := range []struct {
		key  string
		ok   bool
		says string // part of the error message that names the problem
	}{
		{"/a", true, ""},
		{"/Index/1", true, ""},
		{"/PostgresInstance/db1.example.com/5432", true, ""},
		{"/Config/a b", true, ""},
		{"/ü/日本", true, ""},
		{"/a.b/..c/.d/e.", true, ""},
		{"/...", true, ""},
		{"/%2F", true, ""},
		{long, true, ""},
		{"", false, "empty"},
		{"/", false, "root"},
		{"a", false, "start with '/'"},
		{"a/b", false, "start with '/'"},
		{" /a", false, "start with '/'"},
		{"/a/", false, "ends with '/'"},
		{"//", false, "ends with '/'"},
		{"//a", false, "empty segment"},
		{"/a//b", false, "empty segment"},
		{"/a\xff", false, "UTF-8"},
		{"/\xc3", false, "UTF-8"},
		{"/a\x00b", false, "NUL"},
		{"/\x00", false, "NUL"},
		{long + "k", false, "longer than"},
		{"/.", false, `"."`},
		{"/..", false, `"."`},
		{"/a/./b", false, `"."`},
		{"/a/../b", false, `"."`},
		{"/a/..", false, `"."`},
		{"/./a", false, `"."`},
	} {
		err := kvdriver.ValidateKey(c.key)
		if c.ok {
			if err != nil {
				t.Errorf("ValidateKey(%q) = %v, want nil", c.key, err)
			}
			continue
		}
		if !errors.Is(err, kvdriver.ErrInvalidKey) {
			t.Errorf("ValidateKey(%q) = %v, want ErrInvalidKey", c.key, err)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("ValidateKey(%q) = %q, want it to say %q", c.key, err, c.says)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"/", "/a", "/Index/1", "/a/", "/Index/1/"} {
		if err := kvdriver.ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "a", "a/", "//", "/a//", "/a//b", "/a/..", "/a/../", "/\x00", "/\xff", "/\xff/"} {
		if err := kvdriver.ValidatePrefix(p); !errors.Is(err, kvdriver.ErrInvalidKey) {
			t.Errorf("ValidatePrefix(%q) = %v, want ErrInvalidKey", p, err)
		}
	}
}

// A trailing '/' on a prefix means the same as without it: CleanPrefix
// drops one, and InPrefix matches as if it were dropped.
func TestCleanPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/":         "/",
		"/Index":    "/Index",
		"/Index/":   "/Index",
		"/Index/1/": "/Index/1",
		"/a.b/":     "/a.b",
		"/%2F/":     "/%2F",
		"/ü/日本/":    "/ü/日本",
	} {
		if got, err := kvdriver.CleanPrefix(in); err != nil || got != want {
			t.Errorf("CleanPrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "//", "/Index//", "Index/", "/a/./", "/..", "/a\x00/"} {
		if got, err := kvdriver.CleanPrefix(in); !errors.Is(err, kvdriver.ErrInvalidKey) {
			t.Errorf("CleanPrefix(%q) = %q, %v; want ErrInvalidKey", in, got, err)
		}
	}
}

func TestValidateValue(t *testing.T) {
	for _, v := range []string{`{}`, `{"a":1}`, `[]`, `"s"`, `1`, `-1.5e3`, `true`, `null`, ` {"a": [1, 2]} `, `"ü"`, `"\u0000"`} {
		if err := kvdriver.ValidateValue([]byte(v)); err != nil {
			t.Errorf("ValidateValue(%q) = %v, want nil", v, err)
		}
	}
	for _, v := range []string{"", " ", `{`, `{"a":1}}`, `{} {}`, `hello`, `'s'`, `{"a":1,}`, "\"\xff\"", "{\"\xc3\":1}", `NaN`} {
		if err := kvdriver.ValidateValue([]byte(v)); !errors.Is(err, kvdriver.ErrInvalidValue) {
			t.Errorf("ValidateValue(%q) = %v, want ErrInvalidValue", v, err)
		}
	}
	if err := kvdriver.ValidateValue(nil); !errors.Is(err, kvdriver.ErrInvalidValue) {
		t.Errorf("ValidateValue(nil) = %v, want ErrInvalidValue", err)
	}
}

func TestInPrefix(t *testing.T) {
	for _, c := range []struct {
		key, prefix string
		in          bool
	}{
		{"/Index", "/Index", true},
		{"/Index/1", "/Index", true},
		{"/Index/1/2", "/Index", true},
		{"/Index/1", "/Index/1", true},
		{"/Index/1/2", "/Index/1", true},
		{"/Index/10", "/Index/1", false},
		{"/IndexField", "/Index", false},
		{"/IndexField/1", "/Index", false},
		{"/Inde", "/Index", false},
		{"/Index", "/Index/1", false},
		{"/a", "/", true},
		{"/a/b", "/", true},
		{"/a", "/b", false},
		{"/ab", "/a", false},
		{"/a/b", "/a/b/c", false},
		// A prefix with a trailing slash, as callers may pass it.
		{"/Index", "/Index/", true},
		{"/Index/1", "/Index/", true},
		{"/IndexField", "/Index/", false},
	} {
		if got := kvdriver.InPrefix(c.key, c.prefix); got != c.in {
			t.Errorf("InPrefix(%q, %q) = %v, want %v", c.key, c.prefix, got, c.in)
		}
	}
}

func TestValidateBatch(t *testing.T) {
	l := kvdriver.Limits{MaxKeyBytes: 64, MaxValueBytes: 16, MaxBatchOps: 3, MaxBatchBytes: 40}
	v := []byte(`{"n":1}`) // 7 bytes
	v16 := []byte(`"` + strings.Repeat("x", 14) + `"`)
	for _, c := range []struct {
		name string
		ops  []kvdriver.Op
		want error
		says string
	}{
		{"ok", []kvdriver.Op{kvdriver.Put("/a", v), kvdriver.Delete("/b"), kvdriver.Put("/c", v)}, nil, ""},
		{"empty batch", nil, nil, ""},
		{"at MaxBatchBytes", []kvdriver.Op{kvdriver.Put("/a", v16), kvdriver.Put("/b", v16), kvdriver.Put("/c", []byte(`""`))}, nil, ""},
		{"beyond MaxBatchBytes", []kvdriver.Op{kvdriver.Put("/a", v16), kvdriver.Put("/b", v16), kvdriver.Put("/c", []byte(`"x"`))}, kvdriver.ErrTooLarge, "41 bytes, more than 40"},
		{"too many ops", []kvdriver.Op{kvdriver.Delete("/a"), kvdriver.Delete("/b"), kvdriver.Delete("/c"), kvdriver.Delete("/d")}, kvdriver.ErrTooLarge, "4 operations, more than 3"},
		{"value too large", []kvdriver.Op{kvdriver.Put("/a", []byte(`"`+strings.Repeat("x", 15)+`"`))}, kvdriver.ErrTooLarge, "17 bytes, more than 16"},
		{"key too large", []kvdriver.Op{kvdriver.Put("/"+strings.Repeat("k", 64), v)}, kvdriver.ErrTooLarge, "65 bytes"},
		{"duplicate key", []kvdriver.Op{kvdriver.Put("/a", v), kvdriver.Delete("/a")}, kvdriver.ErrInvalidBatch, `"/a" appears twice`},
		{"unknown type", []kvdriver.Op{{Type: 9, Key: "/a"}}, kvdriver.ErrInvalidBatch, "unknown type"},
		{"zero type", []kvdriver.Op{{Key: "/a", Value: v}}, kvdriver.ErrInvalidBatch, "unknown type"},
		{"bad key", []kvdriver.Op{kvdriver.Put("/a", v), kvdriver.Delete("/b/")}, kvdriver.ErrInvalidKey, "operation 1"},
		{"bad value", []kvdriver.Op{kvdriver.Put("/a", []byte(`{`))}, kvdriver.ErrInvalidValue, `"/a"`},
		{"empty value", []kvdriver.Op{kvdriver.Put("/a", nil)}, kvdriver.ErrInvalidValue, "empty"},
		{"require and put one key", []kvdriver.Op{kvdriver.Put("/a", v), kvdriver.Require("/a", 5), kvdriver.Delete("/b")}, nil, ""},
		{"require twice", []kvdriver.Op{kvdriver.Require("/a", 5), kvdriver.Require("/a", 5)}, kvdriver.ErrInvalidBatch, `"/a" appears twice`},
		{"require counts as an op", []kvdriver.Op{kvdriver.Put("/a", v), kvdriver.Delete("/b"), kvdriver.Put("/c", v), kvdriver.Require("/a", 1)}, kvdriver.ErrTooLarge, "4 operations, more than 3"},
		{"require key counts as bytes", []kvdriver.Op{kvdriver.Put("/a", v16), kvdriver.Put("/b", v16), kvdriver.Require("/cdefg", 1)}, kvdriver.ErrTooLarge, "42 bytes, more than 40"},
		{"require negative revision", []kvdriver.Op{kvdriver.Require("/a", -1)}, kvdriver.ErrInvalidBatch, "negative"},
		{"require bad key", []kvdriver.Op{kvdriver.Require("a", 0)}, kvdriver.ErrInvalidKey, "operation 0"},
	} {
		err := kvdriver.ValidateBatch(c.ops, l)
		switch {
		case c.want == nil && err != nil:
			t.Errorf("%s: ValidateBatch = %v, want nil", c.name, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: ValidateBatch = %v, want %v", c.name, err, c.want)
		case c.want != nil && !strings.Contains(err.Error(), c.says):
			t.Errorf("%s: ValidateBatch = %q, want it to say %q", c.name, err, c.says)
		}
	}
	// Zero limits mean no limit.
	big := make([]kvdriver.Op, 1000)
	for i := range big {
		big[i] = kvdriver.Put("/k/"+strings.Repeat("x", i%50)+string(rune('a'+i%26))+"/"+string(rune(0x100+i)), []byte(`"`+strings.Repeat("v", 2000)+`"`))
	}
	if err := kvdriver.ValidateBatch(big, kvdriver.Limits{}); err != nil {
		t.Errorf("ValidateBatch with no limits: %v", err)
	}
}

func TestValidatePut(t *testing.T) {
	l := kvdriver.Limits{MaxKeyBytes: 8, MaxValueBytes: 4}
	if err := kvdriver.ValidatePut("/abcdefg", []byte(`"ab"`), l); err != nil {
		t.Errorf("ValidatePut at both limits: %v", err)
	}
	if err := kvdriver.ValidatePut("/abcdefgh", []byte(`1`), l); !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("ValidatePut of a 9-byte key, MaxKeyBytes 8: %v, want ErrTooLarge", err)
	}
	if err := kvdriver.ValidatePut("/a", []byte(`"abc"`), l); !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("ValidatePut of a 5-byte value, MaxValueBytes 4: %v, want ErrTooLarge", err)
	}
	if err := kvdriver.ValidatePut("/a/", []byte(`1`), l); !errors.Is(err, kvdriver.ErrInvalidKey) {
		t.Errorf("ValidatePut of a bad key: %v, want ErrInvalidKey", err)
	}
	if err := kvdriver.ValidatePut("/a", []byte(`x`), l); !errors.Is(err, kvdriver.ErrInvalidValue) {
		t.Errorf("ValidatePut of a bad value: %v, want ErrInvalidValue", err)
	}
}

// FuzzValidateKey checks that ValidateKey accepts exactly the keys the
// rules describe, never panics, and that InPrefix agrees with the path
// structure of every key it accepts.
func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{"/a", "/Index/1", "", "/", "a", "/a/", "//", "/a//b", "/a\xff", "/a\x00", "/.", "/..", "/a/../b", "/...", "/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := kvdriver.ValidateKey(key)
		segs := strings.Split(strings.TrimPrefix(key, "/"), "/")
		valid := strings.HasPrefix(key, "/") && key != "/" && len(key) <= kvdriver.DefaultMaxKeyBytes &&
			utf8.ValidString(key) && !strings.ContainsRune(key, 0)
		for _, s := range segs {
			if s == "" || s == "." || s == ".." {
				valid = false
			}
		}
		if valid != (err == nil) {
			t.Fatalf("ValidateKey(%q) = %v, but the rules say valid=%v", key, err, valid)
		}
		if err != nil {
			if !errors.Is(err, kvdriver.ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, not wrapping ErrInvalidKey", key, err)
			}
			// A prefix may end with one '/', meaning the same without
			// it; nothing else a key refuses passes as a prefix.
			if pe := kvdriver.ValidatePrefix(key); key != "/" && pe == nil {
				clean, cerr := kvdriver.CleanPrefix(key)
				if cerr != nil || clean == key || kvdriver.ValidateKey(clean) != nil {
					t.Fatalf("ValidatePrefix(%q) = nil but ValidateKey refused it (%v) and it is no key with a trailing '/' (clean %q, %v)", key, err, clean, cerr)
				}
			}
			return
		}
		if perr := kvdriver.ValidatePrefix(key); perr != nil {
			t.Fatalf("ValidatePrefix(%q) = %v for a valid key", key, perr)
		}
		if clean, cerr := kvdriver.CleanPrefix(key + "/"); cerr != nil || clean != key {
			t.Fatalf("CleanPrefix(%q) = %q, %v; want %q", key+"/", clean, cerr, key)
		}
		// Every ancestor path holds the key; a sibling with a longer last
		// segment is never held by it.
		if !kvdriver.InPrefix(key, "/") || !kvdriver.InPrefix(key, key) {
			t.Fatalf("InPrefix(%q, root or itself) = false", key)
		}
		for i := 1; i < len(key); i++ {
			if key[i] == '/' && !kvdriver.InPrefix(key, key[:i]) {
				t.Fatalf("InPrefix(%q, %q) = false for an ancestor", key, key[:i])
			}
		}
		if kvdriver.InPrefix(key+"x", key) {
			t.Fatalf("InPrefix(%q, %q) = true for a sibling", key+"x", key)
		}
		if kvdriver.InPrefix(key, key+"/x") {
			t.Fatalf("InPrefix(%q, %q) = true for a descendant prefix", key, key+"/x")
		}
	})
}
