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

// applyBatch writes ops as one atomic batch, fenced: it requires the
// checkpoint key at the session's fence revision, so nothing is written
// once another agent wrote a checkpoint (ErrConflict ends the session at
// once). A batch that writes the checkpoint moves the fence to its
// revision, one that deletes it to 0. A failing store (outage, leader
// election, network loss) is retried in place with backoff for up to
// Config.StoreRetry, while the session goroutine keeps the replication
// connection alive (wal_sender_timeout); then the session ends and Run
// reconnects. Batches are idempotent (puts and deletes of final values), so
// retrying one that may have been applied is safe; if it was applied with
// the checkpoint, the retry conflicts with the agent's own write and the
// session restarts from the store's checkpoint.
//
// It runs on the applier goroutine (see pipeline.go), which owns the fence
// while the pipeline is busy.
func (s *session) applyBatch(ctx context.Context, ops []kvdriver.Op) error {
	if len(ops) == 0 {
		return nil
	}
	var ckOp *kvdriver.Op
	for i := range ops {
		if ops[i].Key == s.a.ckptKey {
			ckOp = &ops[i]
		}
	}
	batch := make([]kvdriver.Op, 0, len(ops)+1)
	batch = append(append(batch, kvdriver.Require(s.a.ckptKey, s.fence)), ops...)
	bo := backoff{min: s.a.cfg.MinBackoff, max: min(s.a.cfg.MaxBackoff, s.a.cfg.StatusInterval)}
	start := time.Now()
	for {
		actx, cancel := context.WithTimeout(ctx, s.a.cfg.ApplyTimeout)
		t := time.Now()
		rev, err := s.a.cfg.Store.Apply(actx, batch)
		s.a.met.storeWrite.Observe(time.Since(t).Seconds())
		cancel()
		s.a.update(func(st *Status) { st.StoreErr = err })
		if err == nil {
			switch {
			case ckOp == nil:
			case ckOp.Type == kvdriver.OpDelete:
				s.fence = 0
			default:
				s.fence = rev
			}
			return nil
		}
		// A conflict is one even when the session ended meanwhile: the
		// write reached the store after another agent took over.
		if errors.Is(err, kvdriver.ErrConflict) {
			return s.fenced(err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
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
		if sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// apply writes ops as one batch, through the pipeline, and returns once
// the store has them (and everything handed over before).
func (s *session) apply(ctx context.Context, ops []kvdriver.Op) error {
	if err := s.sync(ctx); err != nil {
		return err
	}
	if err := s.hand(ctx, handoff{ops: ops}); err != nil {
		return err
	}
	return s.sync(ctx)
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

// applyAll hands ops to the pipeline in as many batches as the limits
// need. Chunks (not final) return at once; with final, ops ends with the
// checkpoint write, and applyAll returns once the store has it all.
func (s *session) applyAll(ctx context.Context, ops []kvdriver.Op, final bool) error {
	if !final || len(ops) == 0 {
		return s.submit(ctx, ops, nil, nil, nil, nil)
	}
	ck := ops[len(ops)-1]
	if err := s.submit(ctx, ops[:len(ops)-1], &ck, nil, nil, nil); err != nil {
		return err
	}
	return s.sync(ctx)
}

// validatePut checks a row's key and value against the store's rules and
// limits before anything of its transaction is written. Its error names
// neither table nor key: rowError adds them.
func (l batchLimits) validatePut(key string, value []byte) error {
	if err := kvdriver.ValidatePut(key, value, l.store); err != nil {
		return err
	}
	return l.checkRowSize(key, value)
}

// validateEncoded is validatePut for values that are JSON by construction
// (pgjson's encoding, the server's to_jsonb text in a UTF8 database): the
// key and the sizes are checked; the JSON is not parsed again here, being
// valid by construction, and the store driver checks every value of a
// batch before writing it anyway.
func (l batchLimits) validateEncoded(key string, value []byte) error {
	if err := kvdriver.ValidateKey(key); err != nil {
		return err
	}
	if l.store.MaxKeyBytes > 0 && len(key) > l.store.MaxKeyBytes {
		return fmt.Errorf("%w: key is %d bytes, more than the store's %d", kvdriver.ErrTooLarge, len(key), l.store.MaxKeyBytes)
	}
	if l.store.MaxValueBytes > 0 && len(value) > l.store.MaxValueBytes {
		return fmt.Errorf("%w: value is %d bytes, more than the store's %d", kvdriver.ErrTooLarge, len(value), l.store.MaxValueBytes)
	}
	return l.checkRowSize(key, value)
}

func (l batchLimits) checkRowSize(key string, value []byte) error {
	if n := len(key) + len(value); n > l.bytes {
		return fmt.Errorf("%w: row is %d bytes, more than a batch may carry (%d)", kvdriver.ErrTooLarge, n, l.bytes)
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
