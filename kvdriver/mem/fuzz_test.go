package mem_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// only: mem echoes query values, which are no secrets of its own)
// never appears in an error. Seeds are in testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	for _, s := range [][2]string{
		{"name", "s3cr3t-pw"},
		{"", "p@ss:w/rd?#"},
		{"n?history=x", "%zz%zzzz"},
		{"n:1", "päss wörd"},
		{"n/path", "long-password"},
		{"n?history=1&history=2", "a&password=b"},
		{"n#frag", "pw-in-frag"},
		{"n?unknown=1", "unknown-pw"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, rest, password string) {
		parse := func(raw string) error {
			u, err := url.Parse(raw)
			if err != nil {
				return nil // kvdriver.Open fails before mem sees it
			}
			_, err = mem.ParseURL(u)
			return err
		}
		if err := parse("mem://" + rest); err != nil && !errors.Is(err, kvdriver.ErrInvalidURL) {
			t.Fatalf("ParseURL(%q) = %v, not wrapping ErrInvalidURL", "mem://"+rest, err)
		}
		for _, build := range passwordURLs {
			checkNoPassword(t, parse, rest, password, build)
		}
	})
}

// passwordURLs put a password into a URL made of rest.
var passwordURLs = []func(rest, password string) string{
	func(rest, pw string) string { return "mem://" + url.UserPassword("user", pw).String() + "@" + rest },
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
