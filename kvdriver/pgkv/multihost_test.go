package pgkv_test

import (
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
)

// A multi-host URL (libpq's syntax, target_session_attrs=read-write) whose
// first host is down: the store's pool and listener reach the server that
// takes writes.
func TestMultiHostURL(t *testing.T) {
	multi, _ := pgtest.DeadHostFirst(t, pgtest.NewDatabase(t))
	multi = withParams(multi, "target_session_attrs", "read-write")
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
