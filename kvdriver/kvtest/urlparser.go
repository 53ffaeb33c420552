package kvtest

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

// FuzzURLParser is the whole of a driver's FuzzParseURL: it fuzzes the
// URL after "scheme://" and a password through CheckURLParser, seeded from
// the driver's testdata/fuzz/FuzzParseURL.
//
//	func FuzzParseURL(f *testing.F) {
//		kvtest.FuzzURLParser(f, "etcd", func(raw string) error {
//			_, err := etcd.ParseURL(raw)
//			return err
//		})
//	}
func FuzzURLParser(f *testing.F, scheme string, parse func(raw string) error) {
	f.Fuzz(func(t *testing.T, rest, password string) {
		CheckURLParser(t, scheme, parse, rest, password, true)
	})
}

// CheckURLParser is one fuzz input's check: parse of scheme://rest must not
// panic and its errors must wrap kvdriver.ErrInvalidURL; a password put
// into the URL's user info (and, with queryPassword, into a password query
// parameter) must never appear in an error.
func CheckURLParser(t testing.TB, scheme string, parse func(raw string) error, rest, password string, queryPassword bool) {
	t.Helper()
	if err := parse(scheme + "://" + rest); err != nil && !errors.Is(err, kvdriver.ErrInvalidURL) {
		t.Fatalf("ParseURL(%q) = %v, not wrapping ErrInvalidURL", scheme+"://"+rest, err)
	}
	builds := []func(rest, pw string) string{
		func(rest, pw string) string {
			return scheme + "://" + url.UserPassword("user", pw).String() + "@" + rest
		},
	}
	if queryPassword {
		builds = append(builds, func(rest, pw string) string {
			return scheme + "://" + rest + querySep(rest) + "password=" + url.QueryEscape(pw)
		})
	}
	for _, build := range builds {
		checkNoPassword(t, parse, rest, password, build)
	}
}

// passwordMarker stands in for the password in a second parse: what shows
// the password in the first error but not the marker in the second came
// from the password.
const passwordMarker = "Mk7zQ9-marker"

func checkNoPassword(t testing.TB, parse func(string) error, rest, pw string, build func(rest, pw string) string) {
	t.Helper()
	if len(pw) < 6 || strings.Contains(rest, passwordMarker) {
		return // too short to tell from the rest of the URL
	}
	raw := build(rest, pw)
	err := parse(raw)
	if err == nil {
		return
	}
	markErr := parse(build(rest, passwordMarker))
	if markErr != nil && strings.Contains(markErr.Error(), passwordMarker) {
		t.Fatalf("ParseURL(%q) error shows the password: %v", build(rest, passwordMarker), markErr)
	}
	for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String()[1:]} {
		if len(form) < 6 || strings.Contains(rest, form) || strings.Contains(passwordMarker, form) {
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

// querySep is what joins another query parameter to rest.
func querySep(rest string) string {
	if strings.Contains(rest, "?") {
		return "&"
	}
	return "?"
}
