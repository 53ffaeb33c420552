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
	for _, s := range [][2]string{
		{"127.0.0.1:5432/db", "s3cr3t-pw"},
		{"h/db?schema=bad-schema", "p@ss:w/rd?#"},
		{"h/db?poll-interval=x", "%zz%zzzz"},
		{"h/db?lenkwerk-x=1", "päss wörd"},
		{"h/db?sslmode=verify-full&sslrootcert=/ca.pem", "long-password"},
		{"h/db?schema=a&schema=b", "a&password=b"},
		{"h:1/db?history-revisions=-1", "pw-in-path"},
		{"h/db?%zz", "badquery-pw"},
	} {
		f.Add(s[0], s[1])
	}
	parse := func(raw string) error {
		_, err := pgkv.ParseURL(raw)
		return err
	}
	f.Fuzz(func(t *testing.T, rest, password string) {
		kvtest.CheckURLParser(t, "postgres", parse, rest, password, true)
	})
}
