package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// batchLimits are the effective limits of one store batch: the store's own,
// capped by Config so memory stays bounded with unlimited stores.
type batchLimits struct {
	ops, bytes int
	store      kvdriver.Limits
}

func (a *Agent) batchLimits() batchLimits {
	l := a.cfg.Store.Limits()
	b := batchLimits{ops: a.cfg.MaxBatchOps, bytes: a.cfg.MaxBatchBytes, store: l}
	if l.MaxBatchOps > 0 {
		b.ops = min(b.ops, l.MaxBatchOps)
	}
	if l.MaxBatchBytes > 0 {
		b.bytes = min(b.bytes, l.MaxBatchBytes)
	}
	// Every batch carries the fence (a Require of the checkpoint key).
	b.ops--
	b.bytes -= len(a.ckptKey)
	// A transaction's last batch carries the checkpoint too.
	b.ops = max(b.ops, 2)
	return b
}

// permanent reports store errors that retrying the same batch cannot fix.
func permanent(err error) bool {
	for _, e := range []error{kvdriver.ErrTooLarge, kvdriver.ErrInvalidKey, kvdriver.ErrInvalidValue, kvdriver.ErrInvalidBatch, kvdriver.ErrClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// apply writes ops as one atomic batch, fenced: it requires the checkpoint
// key at the session's fence revision, so nothing is written once another
// agent wrote a checkpoint (ErrConflict ends the session at once). A batch
// that writes the checkpoint moves the fence to its revision. A failing
// store (outage, leader election, network loss) is retried in place with
// backoff for up to Config.StoreRetry, while standby status updates keep
// the replication connection alive (wal_sender_timeout); then the session
// ends and Run reconnects. Batches are idempotent (puts and deletes of
// final values), so retrying one that may have been applied is safe; if it
// was applied with the checkpoint, the retry conflicts with the agent's own
// write and the session restarts from the store's checkpoint.
func (s *session) apply(ctx context.Context, ops []kvdriver.Op) error {
	if len(ops) == 0 {
		return nil
	}
	// The checkpoint, when written, is the last op (see applyAll).
	writesCkpt := ops[len(ops)-1].Key == s.a.ckptKey
	deletesCkpt := writesCkpt && ops[len(ops)-1].Type == kvdriver.OpDelete
	batch := append([]kvdriver.Op{kvdriver.Require(s.a.ckptKey, s.fence)}, ops...)
	bo := backoff{min: s.a.cfg.MinBackoff, max: min(s.a.cfg.MaxBackoff, s.a.cfg.StatusInterval)}
	start := time.Now()
	for {
		var rev int64
		err := s.whileAlive(ctx, func(ctx context.Context) error {
			t := time.Now()
			var err error
			rev, err = s.a.cfg.Store.Apply(ctx, batch)
			s.a.met.storeWrite.Observe(time.Since(t).Seconds())
			return err
		})
		s.a.update(func(st *Status) { st.StoreErr = err })
		if err == nil {
			switch {
			case deletesCkpt:
				s.fence = 0
			case writesCkpt:
				s.fence = rev
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, kvdriver.ErrConflict) {
			return s.fenced(err)
		}
		s.a.met.errs.WithLabelValues(errorKind(&storeError{err})).Inc()
		if permanent(err) {
			return &storeError{fmt.Errorf("store batch of %d operations: %w", len(ops), err)}
		}
		if time.Since(start) >= s.a.cfg.StoreRetry {
			return &storeError{fmt.Errorf("store unavailable for %v: %w", time.Since(start).Round(time.Second), err)}
		}
		d := bo.next()
		s.a.log.Warn("store write failed; retrying", "ops", len(ops), "retry_in", d, "err", err)
		s.keepalive()
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
func (s *session) fenced(err error) error {
	s.a.log.Warn("fenced: another agent advanced the checkpoint", "fence", s.fence, "err", err)
	return &storeError{fmt.Errorf("store batch fenced off: %w", err)}
}

// applyAll applies ops in as many batches as the limits need. With final,
// the last batch carries the checkpoint (the caller put it last); the others
// are chunks.
func (s *session) applyAll(ctx context.Context, ops []kvdriver.Op, final bool) error {
	batches := split(ops, s.lim.ops, s.lim.bytes)
	for i, b := range batches {
		if err := s.apply(ctx, b); err != nil {
			return err
		}
		if !final || i < len(batches)-1 {
			s.a.mu.Lock()
			s.a.stats.chunks++
			s.a.mu.Unlock()
		}
		s.keepalive()
	}
	return nil
}

// validatePut checks a row's key and value against the store's rules and
// limits before anything of its transaction is written, naming the table
// and key.
func (s *session) validatePut(table, key string, value []byte) error {
	if err := kvdriver.ValidatePut(key, value, s.lim.store); err != nil {
		return fmt.Errorf("table %s, key %s: %w", table, key, err)
	}
	if n := len(key) + len(value); n > s.lim.bytes {
		return fmt.Errorf("table %s, key %s: %w: row is %d bytes, more than a batch may carry (%d)", table, key, kvdriver.ErrTooLarge, n, s.lim.bytes)
	}
	return nil
}

// whileAlive runs one store call, bounded by ApplyTimeout, and keeps the
// replication connection alive meanwhile: a store call may hang longer than
// wal_sender_timeout. The call runs on its own goroutine; the replication
// connection stays with this one.
func (s *session) whileAlive(ctx context.Context, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.a.cfg.ApplyTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	tick := time.NewTicker(s.a.cfg.StatusInterval / 2)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			s.keepalive()
		}
	}
}
