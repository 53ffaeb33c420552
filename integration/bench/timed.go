package bench

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Timed wraps a store's driver and adds up the wall time of its Apply calls: for an
// in-process agent, how much of a run was spent waiting for the store
// (the agent applies one batch at a time and decodes nothing meanwhile).
type Timed struct {
	kvdriver.Driver
	applyNanos atomic.Int64
	applies    atomic.Int64
}

var _ kvdriver.Driver = (*Timed)(nil)

// Apply applies ops and counts the time it took.
func (t *Timed) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	start := time.Now()
	rev, err := t.Driver.Apply(ctx, ops)
	t.applyNanos.Add(int64(time.Since(start)))
	t.applies.Add(1)
	return rev, err
}

// ApplyTime is the time spent in Apply so far, and the number of calls.
func (t *Timed) ApplyTime() (time.Duration, int64) {
	return time.Duration(t.applyNanos.Load()), t.applies.Load()
}
