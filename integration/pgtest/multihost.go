package pgtest

import (
	"net"
	"strings"
	"testing"
)

// DeadHostFirst returns url (a postgres:// URL with user info) as a
// multi-host URL in libpq's syntax whose first host is a loopback port
// where nothing listens, and that host:port. Add
// target_session_attrs=read-write to have a client skip it for the server
// that takes writes.
func DeadHostFirst(tb testing.TB, url string) (multi, dead string) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	dead = l.Addr().String()
	l.Close()
	at := strings.Index(url, "@") + 1
	return url[:at] + dead + "," + url[at:], dead
}
