package etcd_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// and a password query parameter)
// never appears in an error. Seeds are in testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	for _, s := range [][2]string{
		{"127.0.0.1:2379", "s3cr3t-pw"},
		{"h1:1,h2:2?tls=true&ca-file=/ca.pem", "p@ss:w/rd?#"},
		{"h:1?dial-timeout=bad", "%zz%zzzz"},
		{"h:1?username=other", "päss wörd"},
		{"h:1?password-file=/x", "long-password"},
		{"[::1]:99999", "a&password=b"},
		{"h:1/path", "pw-in-path"},
		{"h:1?tls=false&ca-file=/x", "tlsfalse-pw"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, rest, password string) {
		parse := func(raw string) error {
			_, err := etcd.ParseURL(raw)
			return err
		}
		if err := parse("etcd://" + rest); err != nil && !errors.Is(err, kvdriver.ErrInvalidURL) {
			t.Fatalf("ParseURL(%q) = %v, not wrapping ErrInvalidURL", "etcd://"+rest, err)
		}
		for _, build := range passwordURLs {
			checkNoPassword(t, parse, rest, password, build)
		}
	})
}

// passwordURLs put a password into a URL made of rest.
var passwordURLs = []func(rest, password string) string{
	func(rest, pw string) string { return "etcd://" + url.UserPassword("user", pw).String() + "@" + rest },
	func(rest, pw string) string { return "etcd://" + rest + sep(rest) + "password=" + url.QueryEscape(pw) },
}

// marker stands in for the password in a second parse: what shows the
// password in the first error but not the marker in the second came from
// the password.
const marker = "Mk7zQ9-marker"

func checkNoPassword(t *testing.T, parse func(string) error, rest, pw string, build func(rest, pw string) string) {
	if len(pw) < 6 || strings.Contains(rest, marker) {
		return // too short to tell from the rest of the URL
	}
	raw := build(rest, pw)
	err := parse(raw)
	if err == nil {
		return
	}
	markErr := parse(build(rest, marker))
	if markErr != nil && strings.Contains(markErr.Error(), marker) {
		t.Fatalf("ParseURL(%q) error shows the password: %v", build(rest, marker), markErr)
	}
	for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String()[1:]} {
		if len(form) < 6 || strings.Contains(rest, form) || strings.Contains(marker, form) {
			continue
		}
		if markErr != nil && strings.Contains(markErr.Error(), form) {
			continue // the form is also in the URL without the password
		}
		if strings.Contains(err.Error(), form) {
			t.Fatalf("ParseURL(%q) error shows the password %q: %v", raw, pw, err)
		}
	}
}

// sep is what joins another query parameter to rest.
func sep(rest string) string {
	if strings.Contains(rest, "?") {
		return "&"
	}
	return "?"
}
