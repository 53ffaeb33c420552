package mem

import (
	"context"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Watch implements kvdriver.Driver. Each watch is a goroutine that reads
// the shared history from its own position, so writers never wait for it.
func (s *Driver) Watch(ctx context.Context, prefix string, afterRev int64) <-chan kvdriver.WatchResponse {
	ch := make(chan kvdriver.WatchResponse, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ch <- kvdriver.WatchResponse{Err: kvdriver.ErrClosed}
		close(ch)
		return ch
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

func (s *Driver) watch(ctx context.Context, ch chan<- kvdriver.WatchResponse, prefix string, pos int64) {
	defer s.wg.Done()
	defer close(ch)
	for {
		evs, upTo, changed, err := s.db.since(prefix, pos)
		if err != nil {
			// The buffer slot is free unless the consumer is behind; do
			// not block on a consumer that has gone.
			select {
			case ch <- kvdriver.WatchResponse{Err: err}:
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
