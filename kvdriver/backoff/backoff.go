// Package backoff is the capped exponential delay every retry loop of
// Lenkwerk shares: the drivers' (a watch re-established, a listener
// reconnecting) and the agent's and its commands' (a session reconnecting,
// a store or database opened again). It lives under kvdriver, the lowest
// floor, so that kvdriver needs nothing from the agent and the agent can
// import it.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is a delay that starts at Min and doubles with every Next up to
// Max (Max caps Min too). Its zero state starts at Min.
type Backoff struct {
	Min, Max time.Duration
	// Jitter spreads each delay uniformly over [d/2, d], so that many
	// processes restarted together do not retry in lockstep.
	Jitter bool
	n      int
}

// Next returns the delay to wait now and doubles the following one.
func (b *Backoff) Next() time.Duration {
	d := Delay(b.Min, b.Max, b.n)
	b.n++
	if b.Jitter {
		d = Jitter(d)
	}
	return d
}

// Reset starts the delays at Min again, after progress.
func (b *Backoff) Reset() { b.n = 0 }

// Wait waits Next's delay and reports whether it did: false if ctx ended
// first.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Delay is the n-th delay (n from 0) of a backoff from lo doubling up to
// hi: min(hi, lo·2ⁿ).
func Delay(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 0; i < n && d > 0 && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Jitter returns a delay uniform in [d/2, d].
func Jitter(d time.Duration) time.Duration {
	half := d / 2
	return half + rand.N(d-half+1)
}

// Sleep waits d and reports whether it did: false if ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
