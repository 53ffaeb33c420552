package pgkv_test

import (
	"testing"

	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// and a password query parameter) never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	kvtest.FuzzURLParser(f, "postgres", func(raw string) error {
		_, err := pgkv.ParseURL(raw)
		return err
	})
}
