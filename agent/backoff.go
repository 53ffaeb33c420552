package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is capped exponential backoff with jitter: the n-th wait is
// uniform in [d/2, d] with d = min(max, min·2ⁿ), so many agents restarted
// together do not reconnect in lockstep.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.n++
	half := d / 2
	return half + rand.N(d-half+1)
}

func (b *backoff) reset() { b.n = 0 }

// standbyBackoff is a short jittered wait, uniform in [d/2, d], that does
// not grow: a standby retries at this pace for as long as it waits.
type standbyBackoff struct{ d time.Duration }

func (b standbyBackoff) next() time.Duration {
	half := b.d / 2
	return half + rand.N(b.d-half+1)
}

// sleep waits d or until ctx is done; it reports whether the wait ended
// because ctx is done.
func sleep(ctx context.Context, d time.Duration) (cancelled bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}
