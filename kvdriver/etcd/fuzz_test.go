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
	parse := func(raw string) error {
		_, err := etcd.ParseURL(raw)
		return err
	}
	f.Fuzz(func(t *testing.T, rest, password string) {
		kvtest.CheckURLParser(t, "etcd", parse, rest, password, true)
	})
}
