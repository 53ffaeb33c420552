package migrations

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
)

// A multi-host URL (libpq's syntax, target_session_attrs=read-write)
// whose first host is down: migrate finds the server that takes writes.
func TestMultiHostURL(t *testing.T) {
	multi, dead := pgtest.DeadHostFirst(t, pgtest.NewDatabase(t))
	multi += "&target_session_attrs=read-write"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := Up(ctx, multi, Options{Slot: "lw_multihost_" + strings.ReplaceAll(dead[strings.LastIndex(dead, ":")+1:], ":", "")}); err != nil {
		t.Fatalf("migrate up with %s: %v", multi, err)
	}
}
