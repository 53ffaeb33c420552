package mem

import (
	"context"
	"fmt"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Watch implements kvdriver.Store. Each watch is a goroutine that reads the
// shared history from its own position, so writers never wait for it.
func (s *Store) Watch(ctx context.Context, prefix string, afterRev int64) <-chan kvdriver.WatchResponse {
	ch := make(chan kvdriver.WatchResponse, 1)
	fail := func(err error) <-chan kvdriver.WatchResponse {
		ch <- kvdriver.WatchResponse{Err: fmt.Errorf("mem: watch %q: %w", prefix, err)}
		close(ch)
		return ch
	}
	if ctx.Err() != nil {
		close(ch)
		return ch
	}
	prefix, err := kvdriver.CleanPrefix(prefix)
	if err != nil {
		return fail(err)
	}
	if afterRev < 0 {
		return fail(fmt.Errorf("negative revision %d", afterRev))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fail(kvdriver.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	if afterRev == 0 {
		// Resolved now, not in the goroutine, so writes made after Watch
		// returns are seen.
		afterRev = s.db.current()
	}
	go s.watch(ctx, ch, prefix, afterRev)
	return ch
}

func (s *Store) watch(ctx context.Context, ch chan<- kvdriver.WatchResponse, prefix string, pos int64) {
	defer s.wg.Done()
	defer close(ch)
	for {
		evs, upTo, changed, err := s.db.since(prefix, pos)
		if err != nil {
			// The buffer slot is free unless the consumer is behind; do
			// not block on a consumer that has gone.
			select {
			case ch <- kvdriver.WatchResponse{Err: fmt.Errorf("mem: watch %q: %w", prefix, err)}:
			case <-ctx.Done():
			case <-s.done:
			}
			return
		}
		if len(evs) > 0 {
			select {
			case ch <- kvdriver.WatchResponse{Events: evs, Revision: upTo}:
			case <-ctx.Done():
				return
			case <-s.done:
				return
			}
		}
		if upTo > pos {
			pos = upTo
			continue // maybe more after a capped response
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}
