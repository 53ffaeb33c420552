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
	kvtest.FuzzURLParser(f, "mem", func(raw string) error {
		u, err := url.Parse(raw)
		if err != nil {
			return nil // kvdriver.Open fails before mem sees it
		}
		_, err = mem.ParseURL(u)
		return err
	})
}
