package kvdriver_test

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/kvdriver"
)

// FuzzValidateValue checks that ValidateValue accepts exactly the
// non-empty UTF-8 JSON documents, never panics, and wraps ErrInvalidValue.
func FuzzValidateValue(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,2,{"b":null}]}`, `"x"`, `1e400`, ``, ` `, `{`, `{} {}`, "\"\xff\"", `"\ud800"`, `[` + strings.Repeat("[", 100) + `]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		err := kvdriver.ValidateValue(v)
		want := len(v) > 0 && utf8.Valid(v) && json.Valid(v)
		if want != (err == nil) {
			t.Fatalf("ValidateValue(%q) = %v, want valid=%v", v, err, want)
		}
		if err != nil && !errors.Is(err, kvdriver.ErrInvalidValue) {
			t.Fatalf("ValidateValue(%q) = %v, not wrapping ErrInvalidValue", v, err)
		}
	})
}

// FuzzRedact checks that a password in the userinfo or in a password
// parameter never survives Redact, whatever it is made of, and that Redact
// never panics on any input.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{"s3cret", "p@ss:w/rd?#", "%zz", "xxxxx-long", "päss wörd", "a&password=b"} {
		f.Add(s, "etcd://h:2379/?x=1")
	}
	f.Fuzz(func(t *testing.T, secret, raw string) {
		_ = kvdriver.Redact(raw) // must not panic
		if len(secret) < 6 || strings.Contains("xxxxx", secret) {
			return // too short to tell apart from the rest of the URL
		}
		u := &url.URL{Scheme: "etcd", User: url.UserPassword("user", secret), Host: "h:2379",
			RawQuery: url.Values{"password": {secret}, "password-file": {secret}, "timeout": {"5s"}}.Encode()}
		for _, in := range []string{u.String(), "host=h user=u password=" + conninfoQuote(secret) + " dbname=x"} {
			got := kvdriver.Redact(in)
			for _, form := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret), (&url.URL{User: url.UserPassword("", secret)}).String()[3:]} {
				if len(form) >= 6 && strings.Contains(got, form) {
					t.Fatalf("Redact(%q) = %q still holds the secret %q", in, got, secret)
				}
			}
		}
	})
}

// conninfoQuote quotes a libpq connection string value.
func conninfoQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
