package agent

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	kvbackoff "github.com/bagger/lenkwerk/kvdriver/backoff"
)

// backoff is capped exponential backoff with jitter: the n-th wait is
// uniform in [d/2, d] with d = min(max, min·2ⁿ), so many agents restarted
// together do not reconnect in lockstep. The delays are kvdriver/backoff's,
// the one backoff every retry loop shares.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := kvbackoff.Delay(b.min, b.max, b.n)
	b.n++
	return kvbackoff.Jitter(d)
}

func (b *backoff) reset() { b.n = 0 }

// maxUnreachableWait caps the wait while the database cannot be reached
// or is not the primary: a failover (a promotion, a multi-host URL's next
// server) then costs at most this much beyond the promotion, instead of
// the doubled wait reached while the old primary was gone. A connection
// attempt is cheap; errors of the database's answer (authentication,
// privileges) keep the growing backoff.
const maxUnreachableWait = 2 * time.Second

// unreachable reports a session that ended because no primary could be
// reached: the connection failed or broke, the server is shutting down or
// starting up, or it is a standby.
func unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server answered (a failed login comes wrapped in a
		// ConnectError too): only its going down or coming up counts.
		switch pgErr.Code {
		case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
			return true
		}
		return false
	}
	var netErr net.Error
	return errors.Is(err, errStandby) || isConnErr(err) || errors.As(err, &netErr) || pgconn.Timeout(err)
}

// standbyBackoff is a short jittered wait, uniform in [d/2, d], that does
// not grow: a standby retries at this pace for as long as it waits.
type standbyBackoff struct{ d time.Duration }

func (b standbyBackoff) next() time.Duration { return kvbackoff.Jitter(b.d) }

// sleep waits d or until ctx is done; it reports whether the wait ended
// because ctx is done.
func sleep(ctx context.Context, d time.Duration) (cancelled bool) {
	return !kvbackoff.Sleep(ctx, d)
}
