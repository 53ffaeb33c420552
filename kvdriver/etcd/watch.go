package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
)

// Backoff between re-establishing a watch whose stream ended.
const (
	minWatchBackoff = 50 * time.Millisecond
	maxWatchBackoff = 2 * time.Second
)

// Watch implements kvdriver.Driver. With afterRev 0 it reads the current
// revision before it returns, so a write made after Watch returns is
// always seen; when no member answers within the request timeout the
// channel carries that error instead.
func (s *Driver) Watch(ctx context.Context, prefix string, afterRev int64) <-chan kvdriver.WatchResponse {
	out := make(chan kvdriver.WatchResponse, 1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	w := &watch{s: s, prefix: prefix, out: out, next: afterRev + 1}
	if afterRev == 0 {
		// "Now" must be fixed before Watch returns. Resolving it later,
		// after an outage, would skip writes made in between by others.
		next, err := s.currentRevision(ctx, prefix)
		if err != nil {
			stop()
			cancel()
			out <- kvdriver.WatchResponse{Err: fmt.Errorf("read current revision: %w", err)}
			close(out)
			return out
		}
		w.next = next
	}
	s.watches.Add(1)
	go func() {
		defer s.watches.Done()
		defer close(out)
		defer cancel()
		defer stop()
		w.run(ctx)
	}()
	return out
}

// currentRevision returns the store revision plus one, by a linearizable
// read of one key inside prefix (so a user allowed only the prefix may
// call it).
func (s *Driver) currentRevision(ctx context.Context, prefix string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.client.Get(ctx, prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision + 1, nil
}

// watch is one Watch call: it keeps an etcd watch open on its range,
// re-establishing it from next whenever its stream ends.
type watch struct {
	s      *Driver
	prefix string
	out    chan<- kvdriver.WatchResponse
	// next is the first revision not yet delivered.
	next int64
}

// errRetry says the etcd watch ended for a reason worth re-establishing it.
var errRetry = errors.New("watch stream ended")

func (w *watch) run(ctx context.Context) {
	key, end := w.prefix, clientv3.GetPrefixRangeEnd(w.prefix)
	if w.prefix != "/" {
		// "/Index" up to "/Index0" holds "/Index" and "/Index/…" ('0' is
		// the byte after '/'), plus rare keys such as "/Index-x" that
		// deliver filters out; "/IndexField" stays outside.
		end = w.prefix + "0"
	}
	bo := backoff.Backoff{Min: minWatchBackoff, Max: maxWatchBackoff}
	for ctx.Err() == nil {
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := w.s.client.Watch(wctx, key, clientv3.WithRange(end), clientv3.WithRev(w.next), clientv3.WithProgressNotify())
		delivered, err := w.consume(ctx, wch)
		wcancel()
		if !errors.Is(err, errRetry) {
			if err != nil {
				w.send(ctx, kvdriver.WatchResponse{Err: err})
			}
			return
		}
		if delivered {
			bo.Reset()
		}
		if !bo.Wait(ctx) {
			return
		}
		w.s.watchRestarts.Add(1)
	}
}

// consume forwards one etcd watch channel until it closes. It returns
// errRetry when the watch should be re-established, a terminal error, or
// nil when ctx is done; delivered says whether it made progress.
func (w *watch) consume(ctx context.Context, wch clientv3.WatchChan) (delivered bool, err error) {
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) || wr.CompactRevision != 0 {
				return delivered, fmt.Errorf("after revision %d: %w (history compacted up to revision %d)",
					w.next-1, kvdriver.ErrCompacted, wr.CompactRevision)
			}
			if w.s.ErrorCode(err) == kvdriver.PermissionDenied {
				// Retrying cannot help until an operator acts.
				return delivered, err
			}
			return delivered, errRetry
		}
		if wr.Canceled {
			return delivered, errRetry
		}
		if len(wr.Events) == 0 {
			// A progress notification: every event up to the header's
			// revision has been delivered.
			if rev := wr.Header.Revision; wr.IsProgressNotify() && rev >= w.next {
				if !w.send(ctx, kvdriver.WatchResponse{Revision: rev}) {
					return delivered, nil
				}
				w.next, delivered = rev+1, true
			}
			continue
		}
		var events []kvdriver.Event
		for _, ev := range wr.Events {
			rev := ev.Kv.ModRevision
			key := string(ev.Kv.Key)
			// etcd resumes from the revision after the last one it sent,
			// so rev < next does not happen; the check makes "nothing
			// repeated" independent of that.
			if rev < w.next || !kvdriver.InPrefix(key, w.prefix) {
				continue
			}
			e := kvdriver.Event{Type: kvdriver.OpPut, Key: key, Value: ev.Kv.Value, Revision: rev}
			if ev.Type == mvccpb.DELETE {
				e.Type, e.Value = kvdriver.OpDelete, nil
			}
			events = append(events, e)
		}
		// etcd never splits a revision across watch responses, so one
		// etcd response is whole revisions.
		last := wr.Events[len(wr.Events)-1].Kv.ModRevision
		if len(events) > 0 {
			if !w.send(ctx, kvdriver.WatchResponse{Events: events, Revision: last}) {
				return delivered, nil
			}
			delivered = true
		}
		w.next = max(w.next, last+1)
	}
	if ctx.Err() != nil {
		return delivered, nil
	}
	return delivered, errRetry
}

// send delivers r unless ctx ends first.
func (w *watch) send(ctx context.Context, r kvdriver.WatchResponse) bool {
	select {
	case w.out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}
