package pgkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
)

// Watch implements kvdriver.Driver. It reads the change log after the
// last revision it delivered whenever the listener wakes it (a NOTIFY, a
// listener reconnect), every PollInterval, and on retries after errors, so
// lost notifications and server restarts delay events but never lose or
// repeat them. afterRev 0 means the store revision at the time of the call,
// read before Watch returns: when the server cannot be reached the watch
// ends at once with that error, as etcd's does.
func (s *Driver) Watch(ctx context.Context, prefix string, afterRev int64) <-chan kvdriver.WatchResponse {
	ch := make(chan kvdriver.WatchResponse, 16)
	fail := func(err error) <-chan kvdriver.WatchResponse {
		ch <- kvdriver.WatchResponse{Err: err, Revision: afterRev}
		close(ch)
		return ch
	}
	w := &watcher{s: s, ch: ch, last: afterRev}
	w.eq, w.lo, w.hi = prefixRange(prefix)
	if afterRev == 0 {
		// "Now" must be fixed before Watch returns: resolving it later,
		// after an outage, would skip what others wrote in between.
		head, _, err := s.head(ctx)
		if err != nil {
			return fail(fmt.Errorf("read current revision: %w", err))
		}
		w.last = head
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fail(kvdriver.ErrClosed)
	}
	wake, unsubscribe := s.listener.subscribe()
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(ch)
		defer unsubscribe()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(s.ctx, cancel)
		defer stop()
		w.run(ctx, wake)
	}()
	return ch
}

func (s *Driver) head(ctx context.Context) (rev, compacted int64, err error) {
	var (
		lsn     *string
		flushed bool
	)
	err = s.pool.QueryRow(ctx, s.q.head).Scan(&rev, &compacted, &lsn, &flushed)
	if err != nil {
		return 0, 0, s.translate(err)
	}
	if err := s.awaitDurable(ctx, rev, lsn, flushed); err != nil {
		return 0, 0, err
	}
	return rev, compacted, nil
}

type watcher struct {
	s          *Driver
	ch         chan kvdriver.WatchResponse
	eq, lo, hi string
	last       int64 // every revision up to here is delivered
	maxHead    int64 // highest store revision seen
}

func (w *watcher) run(ctx context.Context, wake <-chan struct{}) {
	poll := time.NewTicker(w.s.cfg.PollInterval)
	defer poll.Stop()
	bo := backoff.Backoff{Min: initialReconnectBackoff, Max: maxReconnectBackoff}
	for {
		err := w.catchUp(ctx)
		if ctx.Err() != nil {
			return
		}
		if w.s.permanent(err) {
			select {
			case w.ch <- kvdriver.WatchResponse{Err: err, Revision: w.last}:
			case <-ctx.Done():
			}
			return
		}
		var retry *time.Timer
		var retryC <-chan time.Time
		if err != nil {
			retry = time.NewTimer(bo.Next())
			retryC = retry.C
		} else {
			bo.Reset()
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-poll.C:
		case <-retryC:
		}
		if retry != nil {
			retry.Stop()
		}
	}
}

// permanent reports errors that end a watch instead of being retried:
// compacted history, and what retrying cannot help (ErrorCode: no
// privilege, no such table).
func (s *Driver) permanent(err error) bool {
	return err != nil && (errors.Is(err, kvdriver.ErrCompacted) || !s.ErrorCode(err).Retryable())
}

// compactedError ends a watch: the history it needs is gone.
type compactedError struct{ after, compacted int64 }

func (e compactedError) Error() string {
	return fmt.Sprintf("after revision %d: history up to %d compacted: %v", e.after, e.compacted, kvdriver.ErrCompacted)
}

func (e compactedError) Unwrap() error { return kvdriver.ErrCompacted }

// rewoundError ends a watch whose store lost revisions it had seen. It
// wraps ErrCompacted because the remedy is the same: list again.
type rewoundError struct{ seen, head int64 }

func (e rewoundError) Error() string {
	return fmt.Sprintf("store revision went back from %d to %d (restored from backup or failed over without the latest commits): %v", e.seen, e.head, kvdriver.ErrCompacted)
}

func (e rewoundError) Unwrap() error { return kvdriver.ErrCompacted }

// catchUp delivers everything committed after w.last, in responses of whole
// revisions, until it reaches the store revision. Each read takes the
// prefix's own events after w.last, so revisions of other keys cost
// nothing. A response carries, unless one revision alone is bigger, at
// most watchEventsPerResponse events.
func (w *watcher) catchUp(ctx context.Context) error {
	for {
		limit := int64(watchEventsPerResponse)
		events, head, compacted, err := w.read(ctx, w.last, nil, &limit)
		if err != nil {
			return err
		}
		if compacted > w.last {
			return compactedError{after: w.last, compacted: compacted}
		}
		if head < w.maxHead {
			// Committed revisions vanished: a restore, or a failover to a
			// standby without the last commits. The numbers will be reused
			// for other changes, so this watch cannot go on.
			return rewoundError{seen: w.maxHead, head: head}
		}
		w.maxHead = head
		if head <= w.last {
			return nil
		}
		// Fewer events than the limit: they are all of the prefix's
		// events up to the head, read in one snapshot.
		upto := head
		if len(events) >= watchEventsPerResponse {
			// The page may end inside its last revision: hold that
			// revision back, or read it alone and whole if it is the only one.
			lastRev := events[len(events)-1].Revision
			cut := len(events)
			for cut > 0 && events[cut-1].Revision == lastRev {
				cut--
			}
			if cut > 0 {
				events, upto = events[:cut], lastRev-1
			} else {
				// Reading "after lastRev-1" keeps the compaction check
				// sound: if the point is still at or below lastRev-1,
				// revision lastRev is intact.
				events, _, compacted, err = w.read(ctx, lastRev-1, &lastRev, nil)
				if err != nil {
					return err
				}
				if compacted > lastRev-1 {
					return compactedError{after: w.last, compacted: compacted}
				}
				upto = lastRev
			}
		}
		if len(events) > 0 {
			select {
			case w.ch <- kvdriver.WatchResponse{Events: events, Revision: upto}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		w.last = upto
		if upto >= head {
			return nil
		}
	}
}

// read runs the watch query: the prefix's events after `after` (up to
// revision *upto, at most *limit events; nil: no bound), the head and the
// compaction point, all from one snapshot.
func (w *watcher) read(ctx context.Context, after int64, upto, limit *int64) (events []kvdriver.Event, head, compacted int64, err error) {
	// A read interrupted by its context costs its connection (pgx closes
	// it), and here that is the store's shared connection: the listener
	// would reconnect and wake every watch. So a cancelled watch lets its
	// read finish (it is one bounded statement); Close still interrupts it.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), watchReadTimeout)
	defer cancel()
	stop := context.AfterFunc(w.s.ctx, cancel)
	defer stop()
	// QueryExecModeExec: an unnamed statement, planned for these
	// parameters (see queries.watch).
	rows, err := w.s.pool.Query(qctx, w.s.q.watch, pgx.QueryExecModeExec, after, limit, w.eq, w.lo, w.hi, upto)
	if err != nil {
		return nil, 0, 0, w.s.translate(err)
	}
	defer rows.Close()
	var (
		lsn     *string
		flushed bool
	)
	for rows.Next() {
		var (
			rev   *int64
			key   *string
			value []byte
		)
		if err := rows.Scan(&head, &compacted, &lsn, &flushed, &rev, &key, &value); err != nil {
			return nil, 0, 0, err
		}
		if rev == nil {
			continue
		}
		e := kvdriver.Event{Type: kvdriver.OpPut, Key: *key, Value: value, Revision: *rev}
		if value == nil {
			e.Type = kvdriver.OpDelete
		}
		events = append(events, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, 0, w.s.translate(err)
	}
	// Nothing read is delivered before it is durable.
	if err := w.s.awaitDurable(qctx, head, lsn, flushed); err != nil {
		return nil, 0, 0, err
	}
	return events, head, compacted, nil
}
