// Package backoff is the capped exponential delay the drivers' retry loops
// (a watch re-established, a listener reconnecting) share.
package backoff

import (
	"context"
	"time"
)

// Backoff is a delay that starts at Min and doubles with every Next up to
// Max. The zero value of its state starts at Min.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Next returns the delay to wait now and doubles the following one.
func (b *Backoff) Next() time.Duration {
	d := max(b.next, b.Min)
	b.next = min(2*d, b.Max)
	return d
}

// Reset starts the delays at Min again, after progress.
func (b *Backoff) Reset() { b.next = b.Min }

// Wait waits Next's delay and reports whether it did: false if ctx ended
// first.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
