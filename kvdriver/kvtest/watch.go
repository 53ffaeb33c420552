package kvtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// watcher reads one Watch channel and checks every response against the
// watch contract as it arrives: events after the start revision, inside
// the prefix, in revision order, each exactly once, a revision never split
// across two responses. Contract breaches are reported with t.Errorf, so a
// watcher may be drained from another goroutine.
type watcher struct {
	t      *testing.T
	name   string
	prefix string
	after  int64
	ch     <-chan kvdriver.WatchResponse

	events   []kvdriver.Event
	respOf   []int // respOf[i] is the index of the response events[i] came in
	nresp    int
	lastRev  int64 // revision of the last event
	progress int64 // highest revision the watch is known to be up to
	seen     map[string]bool
	err      error // the error a response ended the watch with
	closed   bool
}

func (e *env) watch(ctx context.Context, s *kvdriver.Store, prefix string, after int64) *watcher {
	return newWatcher(e.t, s.Watch(ctx, prefix, after), prefix, after)
}

func newWatcher(t *testing.T, ch <-chan kvdriver.WatchResponse, prefix string, after int64) *watcher {
	return &watcher{
		t: t, ch: ch, prefix: prefix, after: after, progress: after,
		name: fmt.Sprintf("Watch(%q, after %d)", prefix, after),
		seen: map[string]bool{},
	}
}

// recv takes one response (or the channel's close) and checks it. It
// returns false on timeout.
func (w *watcher) recv(timeout *time.Timer) bool {
	select {
	case r, ok := <-w.ch:
		if !ok {
			w.closed = true
			return true
		}
		w.check(r)
		return true
	case <-timeout.C:
		return false
	}
}

func (w *watcher) check(r kvdriver.WatchResponse) {
	t := w.t
	idx := w.nresp
	w.nresp++
	if w.err != nil {
		t.Errorf("%s: response after the one that ended the watch with %v", w.name, w.err)
	}
	for _, ev := range r.Events {
		id := fmt.Sprintf("%s %s@%d", ev.Type, ev.Key, ev.Revision)
		switch {
		case w.seen[id]:
			t.Errorf("%s: event %s delivered twice", w.name, id)
		case ev.Revision <= w.after:
			t.Errorf("%s: event %s is not after the start revision %d", w.name, id, w.after)
		case ev.Revision < w.lastRev:
			t.Errorf("%s: event %s after an event of revision %d: out of order", w.name, id, w.lastRev)
		case ev.Revision == w.lastRev && len(w.respOf) > 0 && w.respOf[len(w.respOf)-1] != idx:
			t.Errorf("%s: revision %d split across two responses (event %s): a batch must arrive in one response", w.name, ev.Revision, id)
		case ev.Revision <= w.progress && ev.Revision != w.lastRev:
			t.Errorf("%s: event %s arrived after a response said the watch was up to revision %d", w.name, id, w.progress)
		}
		if !kvdriver.InPrefix(ev.Key, w.prefix) {
			t.Errorf("%s: event %s is outside the watched prefix", w.name, id)
		}
		switch ev.Type {
		case kvdriver.OpPut:
			if !json.Valid(ev.Value) {
				t.Errorf("%s: put event %s has a value that is not JSON: %q", w.name, id, ev.Value)
			}
		case kvdriver.OpDelete:
		default:
			t.Errorf("%s: event %s has unknown type %d", w.name, id, ev.Type)
		}
		w.seen[id] = true
		if ev.Revision > w.lastRev {
			w.lastRev = ev.Revision
		}
		w.events = append(w.events, ev)
		w.respOf = append(w.respOf, idx)
	}
	if r.Err != nil {
		w.err = r.Err
		return
	}
	if r.Revision < w.lastRev {
		t.Errorf("%s: response Revision %d is below its last event's revision %d", w.name, r.Revision, w.lastRev)
	}
	if r.Revision > w.progress {
		w.progress = r.Revision
	}
	if w.lastRev > w.progress {
		w.progress = w.lastRev
	}
}

// until reads until the watch is up to rev. It returns an error naming
// what was seen when the watch ends, fails or times out first.
func (w *watcher) until(rev int64) error {
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for w.progress < rev {
		if w.err != nil {
			return fmt.Errorf("%s: ended with %v before revision %d (%s)", w.name, w.err, rev, w.summary())
		}
		if w.closed {
			return fmt.Errorf("%s: channel closed before revision %d (%s)", w.name, rev, w.summary())
		}
		if !w.recv(timeout) {
			return fmt.Errorf("%s: no revision %d within %s (%s)", w.name, rev, waitTimeout, w.summary())
		}
	}
	return nil
}

// mustUntil is until, failing the check on error. Call it from the test
// goroutine only.
func (w *watcher) mustUntil(rev int64) {
	w.t.Helper()
	if err := w.until(rev); err != nil {
		w.t.Fatal(err)
	}
}

// end reads until the watch ends (closed channel, maybe after an error
// response) and returns its error; it fails the check on timeout.
func (w *watcher) end(within time.Duration) error {
	w.t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for !w.closed {
		if !w.recv(timeout) {
			w.t.Fatalf("%s: channel not closed within %s (%s)", w.name, within, w.summary())
		}
	}
	return w.err
}

func (w *watcher) summary() string {
	return fmt.Sprintf("%d events in %d responses, up to revision %d; last events: %s",
		len(w.events), w.nresp, w.progress, fmtEvents(tail(w.events, 5)))
}

func tail(evs []kvdriver.Event, n int) []kvdriver.Event {
	if len(evs) > n {
		return evs[len(evs)-n:]
	}
	return evs
}

func fmtEvents(evs []kvdriver.Event) string {
	if len(evs) == 0 {
		return "none"
	}
	parts := make([]string, len(evs))
	for i, ev := range evs {
		parts[i] = fmtEvent(ev)
	}
	return strings.Join(parts, ", ")
}

func fmtEvent(ev kvdriver.Event) string {
	if ev.Type == kvdriver.OpPut {
		return fmt.Sprintf("%d:put %s=%s", ev.Revision, ev.Key, ev.Value)
	}
	return fmt.Sprintf("%d:%s %s", ev.Revision, ev.Type, ev.Key)
}

// wantEvents checks that got is exactly want (type, key, revision and
// JSON-equal value), naming missing, unexpected and repeated events, or
// else the first difference.
func wantEvents(t *testing.T, what string, got, want []kvdriver.Event) {
	t.Helper()
	id := func(ev kvdriver.Event) string { return fmt.Sprintf("%s %s@%d", ev.Type, ev.Key, ev.Revision) }
	count := map[string]int{}
	for _, ev := range want {
		count[id(ev)]++
	}
	var missing, extra, twice []kvdriver.Event
	seen := map[string]int{}
	for _, ev := range got {
		k := id(ev)
		seen[k]++
		switch {
		case seen[k] > count[k] && count[k] > 0:
			twice = append(twice, ev)
		case count[k] == 0:
			extra = append(extra, ev)
		}
	}
	for _, ev := range want {
		if seen[id(ev)] == 0 {
			missing = append(missing, ev)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s: missing events (%d of %d): %s", what, len(missing), len(want), fmtEvents(head(missing, 5)))
	}
	if len(twice) > 0 {
		t.Errorf("%s: events delivered twice: %s", what, fmtEvents(head(twice, 5)))
	}
	if len(extra) > 0 {
		t.Errorf("%s: unexpected events (%d): %s", what, len(extra), fmtEvents(head(extra, 5)))
	}
	if len(missing)+len(twice)+len(extra) > 0 {
		return
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.Key != w.Key || g.Revision != w.Revision || (w.Type == kvdriver.OpPut && !sameJSON(g.Value, w.Value)) {
			t.Errorf("%s: event #%d is %s, want %s (out of order or wrong value)", what, i, fmtEvent(g), fmtEvent(w))
			return
		}
	}
}

func head(evs []kvdriver.Event, n int) []kvdriver.Event {
	if len(evs) > n {
		return evs[:n]
	}
	return evs
}

func putEv(key string, value []byte, rev int64) kvdriver.Event {
	return kvdriver.Event{Type: kvdriver.OpPut, Key: key, Value: value, Revision: rev}
}

func delEv(key string, rev int64) kvdriver.Event {
	return kvdriver.Event{Type: kvdriver.OpDelete, Key: key, Revision: rev}
}
