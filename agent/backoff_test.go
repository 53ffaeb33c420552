package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// unreachable decides whether a failed session waits at most
// maxUnreachableWait (a failover in progress) or backs off further.
func TestUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A real refused connection: nothing listens on port 1.
	_, refused := pgconn.Connect(ctx, "postgres://x@127.0.0.1:1/db?connect_timeout=5")
	if refused == nil {
		t.Fatal("connected to port 1")
	}
	login := fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: pgerrcode.InvalidPassword, Message: "password authentication failed"})
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", fmt.Errorf("open: %w", refused), true},
		{"standby", fmt.Errorf("127.0.0.1:5432: %w", errStandby), true},
		{"connection closed", fmt.Errorf("receive replication message: %w", io.ErrUnexpectedEOF), true},
		{"shutting down", &pgconn.PgError{Severity: "FATAL", Code: pgerrcode.AdminShutdown}, true},
		{"starting up", &pgconn.PgError{Severity: "FATAL", Code: pgerrcode.CannotConnectNow}, true},
		{"failed login", login, false},
		{"privilege", &pgconn.PgError{Severity: "ERROR", Code: pgerrcode.InsufficientPrivilege}, false},
		{"value", &ValueError{Table: "storage.config", Err: errors.New("too large")}, false},
		{"slot in use", fmt.Errorf("%w: slot x", ErrSlotInUse), false},
	} {
		if got := unreachable(c.err); got != c.want {
			t.Errorf("%s: unreachable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

// backoff's n-th wait is uniform in [d/2, d] with d = min(max, min·2ⁿ),
// also when max is below min (the store retries cap max at the status
// interval); reset starts again at min.
func TestBackoffDelays(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		min, max time.Duration
		want     []time.Duration
	}{
		{250 * ms, 2 * time.Second, []time.Duration{250 * ms, 500 * ms, time.Second, 2 * time.Second, 2 * time.Second}},
		{time.Second, 100 * ms, []time.Duration{100 * ms, 100 * ms}},
	} {
		for round := range 50 {
			bo := backoff{min: c.min, max: c.max}
			for i, d := range c.want {
				if got := bo.next(); got < d/2 || got > d {
					t.Fatalf("min %v max %v round %d: wait %d is %v, want within [%v, %v]", c.min, c.max, round, i, got, d/2, d)
				}
			}
			bo.reset()
			if got := bo.next(); got < c.want[0]/2 || got > c.want[0] {
				t.Fatalf("min %v max %v: after reset %v, want within [%v, %v]", c.min, c.max, got, c.want[0]/2, c.want[0])
			}
		}
	}
	for range 50 {
		if got := (standbyBackoff{time.Second}).next(); got < 500*ms || got > time.Second {
			t.Fatalf("standby wait %v, want within [500ms, 1s]", got)
		}
	}
}
