package bench

import (
	"context"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Timed wraps a store's driver and adds up the wall time of its Apply calls: for an
// in-process agent, how much of a run was spent waiting for the store
// (the agent applies one batch at a time and decodes nothing meanwhile).
//
// A call counts from its start: a write is visible in the store before
// Apply returns, so a reader that saw it must also see the call counted
// and its time so far.
type Timed struct {
	kvdriver.Driver

	mu       sync.Mutex
	done     time.Duration // time of the calls that returned
	calls    int64         // calls begun
	inflight int64         // calls not returned yet
	starts   time.Duration // sum of their start times, since epoch
	epoch    time.Time
}

var _ kvdriver.Driver = (*Timed)(nil)

// Apply applies ops and counts the time it took.
func (t *Timed) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	start := t.begin()
	rev, err := t.Driver.Apply(ctx, ops)
	t.end(start)
	return rev, err
}

func (t *Timed) begin() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch.IsZero() {
		t.epoch = time.Now()
	}
	start := time.Since(t.epoch)
	t.calls++
	t.inflight++
	t.starts += start
	return start
}

func (t *Timed) end(start time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done += time.Since(t.epoch) - start
	t.inflight--
	t.starts -= start
}

// ApplyTime is the time spent in Apply so far (calls still running count
// up to now), and the number of calls begun.
func (t *Timed) ApplyTime() (time.Duration, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch.IsZero() {
		return 0, 0
	}
	return t.done + time.Duration(t.inflight)*time.Since(t.epoch) - t.starts, t.calls
}
