package agent

import (
	"context"
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

// write hands b to the pipeline (see submit) and returns once the store
// has it and everything handed over before.
func (s *session) write(ctx context.Context, b batch) error {
	if err := s.submit(ctx, b); err != nil {
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
