package pgkv_test

import (
	"net"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
)

// A multi-host URL (libpq's syntax, target_session_attrs=read-write) whose
// first host is down: the store's pool and listener reach the server that
// takes writes.
func TestMultiHostURL(t *testing.T) {
	db := pgtest.NewDatabase(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	at := strings.Index(db, "@") + 1
	multi := withParams(db[:at]+dead+","+db[at:], "target_session_attrs", "read-write")
	s := openStore(t, multi)
	ctx := ctxT(t)
	w := s.Watch(ctx, "/k", 0)
	if _, err := s.Put(ctx, "/k", []byte(`"v"`)); err != nil {
		t.Fatalf("put through %s: %v", multi, err)
	}
	resp := <-w
	if resp.Err != nil || len(resp.Events) != 1 || string(resp.Events[0].Value) != `"v"` {
		t.Fatalf("watch: %+v", resp)
	}
}
