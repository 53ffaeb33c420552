package kvtest

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// CheckWatchFromNowDown is a driver test's check for a store whose server
// the test has stopped: a Watch from the current revision (afterRev 0)
// cannot fix "now", so it must answer with an error response, within ten
// seconds, rather than guess.
func CheckWatchFromNowDown(t testing.TB, ctx context.Context, s *kvdriver.Store) {
	t.Helper()
	start := time.Now()
	r, ok := <-s.Watch(ctx, "/down", 0)
	if !ok || r.Err == nil {
		t.Fatalf("Watch from now with the server down: %v, %v; want an error response", r, ok)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Watch took %v to report the outage", d)
	}
	t.Logf("Watch from now, server down: %v", r.Err)
}
