package mem_test

import (
	"net/url"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL's user info
// or a password= parameter never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
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
	parse := func(raw string) error {
		u, err := url.Parse(raw)
		if err != nil {
			return nil // kvdriver.Open fails before mem sees it
		}
		_, err = mem.ParseURL(u)
		return err
	}
	f.Fuzz(func(t *testing.T, rest, password string) {
		kvtest.CheckURLParser(t, "mem", parse, rest, password, true)
	})
}
