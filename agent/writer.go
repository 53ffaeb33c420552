package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// writer is the session's one way to write the store. Every write is
// fenced: it requires the checkpoint key at the revision the session last
// read or wrote (fence; 0: absent), so nothing is written once another
// agent wrote a checkpoint, and a write that puts or deletes the
// checkpoint moves the fence. Each attempt is timed into the store-write
// metric and reported in Status.StoreErr.
//
// One goroutine writes at a time: the applier (see pipeline.go) while the
// pipeline is busy, the session goroutine once it has drained it (sync).
type writer struct {
	a     *Agent
	fence int64
}

// try writes ops, behind the fence, in one attempt bounded by timeout.
func (w *writer) try(ctx context.Context, ops []kvdriver.Op, timeout time.Duration) error {
	var ckOp *kvdriver.Op
	for i := range ops {
		if ops[i].Key == w.a.ckptKey {
			ckOp = &ops[i]
		}
	}
	batch := make([]kvdriver.Op, 0, len(ops)+1)
	batch = append(append(batch, kvdriver.Require(w.a.ckptKey, w.fence)), ops...)
	actx, cancel := context.WithTimeout(ctx, timeout)
	t := time.Now()
	rev, err := w.a.cfg.Store.Apply(actx, batch)
	w.a.met.storeWrite.Observe(time.Since(t).Seconds())
	cancel()
	w.a.update(func(st *Status) { st.StoreErr = err })
	if err != nil {
		return err
	}
	switch {
	case ckOp == nil:
	case ckOp.Type == kvdriver.OpDelete:
		w.fence = 0
	default:
		w.fence = rev
	}
	return nil
}

// apply writes ops as one atomic batch, fenced (ErrConflict ends the
// session at once). A failing store (outage, leader election, network
// loss) is retried in place with backoff for up to Config.StoreRetry,
// while the session goroutine keeps the replication connection alive
// (wal_sender_timeout); then the session ends and Run reconnects. Batches
// are idempotent (puts and deletes of final values), so retrying one that
// may have been applied is safe; if it was applied with the checkpoint,
// the retry conflicts with the agent's own write and the session restarts
// from the store's checkpoint.
func (w *writer) apply(ctx context.Context, ops []kvdriver.Op) error {
	if len(ops) == 0 {
		return nil
	}
	a := w.a
	bo := backoff{min: a.cfg.MinBackoff, max: min(a.cfg.MaxBackoff, a.cfg.StatusInterval)}
	start := time.Now()
	for {
		err := w.try(ctx, ops, a.cfg.ApplyTimeout)
		if err == nil {
			return nil
		}
		// A conflict is one even when the session ended meanwhile: the
		// write reached the store after another agent took over.
		if errors.Is(err, kvdriver.ErrConflict) {
			return w.fenced(err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.met.errs.WithLabelValues(errorKind(&storeError{err})).Inc()
		if permanent(err) {
			return &storeError{fmt.Errorf("store batch of %d operations: %w", len(ops), err)}
		}
		if time.Since(start) >= a.cfg.StoreRetry {
			return &storeError{fmt.Errorf("store unavailable for %v: %w", time.Since(start).Round(time.Second), err)}
		}
		d := bo.next()
		a.log.Warn("store write failed; retrying", "ops", len(ops), "retry_in", d, "err", err)
		if sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// fenced ends the session after a batch failed its fence: another agent
// wrote the store's checkpoint since this session read it, so this one
// was overtaken (it hung, or lost PostgreSQL but not the store). Retrying
// would write older values over newer ones; the next session waits for
// the lock as a standby or reads the new checkpoint.
func (w *writer) fenced(err error) error {
	w.a.log.Warn("fenced: another agent advanced the checkpoint", "fence", w.fence, "err", err)
	return &storeError{fmt.Errorf("store batch fenced off: %w", err)}
}

// permanent reports store errors that retrying the same batch cannot fix.
// kvdriver classifies the error; the agent's policy differs from
// kvdriver.Retryable in one way: a refused credential or a read-only
// store is retried for Config.StoreRetry, so an operator who fixes the
// grant or the server sees the mirror resume without a restart.
func permanent(err error) bool {
	switch kvdriver.Code(err) {
	case kvdriver.TooLarge, kvdriver.InvalidArgument, kvdriver.Closed:
		return true
	}
	return false
}
