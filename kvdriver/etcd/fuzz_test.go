package etcd_test

import (
	"testing"

	"github.com/bagger/lenkwerk/kvdriver/etcd"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
)

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// and a password query parameter) never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	kvtest.FuzzURLParser(f, "etcd", func(raw string) error {
		_, err := etcd.ParseURL(raw)
		return err
	})
}
