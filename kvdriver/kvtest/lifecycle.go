package kvtest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// testContextCancel: every call with a cancelled or expired context
// returns promptly with an error wrapping the context's error and writes
// nothing; a watch's channel closes when its context ends.
func testContextCancel(e *env) {
	t := e.t
	s := e.store()
	k := e.key("k")
	rev := e.put(s, k, val(1))

	for _, c := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
		{"expired", func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		}, context.DeadlineExceeded},
	} {
		calls := []struct {
			name string
			call func(ctx context.Context) error
		}{
			{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, k); return err }},
			{"Put", func(ctx context.Context) error { _, err := s.Put(ctx, e.key("put"), val(2)); return err }},
			{"Delete", func(ctx context.Context) error { _, err := s.Delete(ctx, k); return err }},
			{"List", func(ctx context.Context) error { _, _, err := s.List(ctx, e.prefix); return err }},
			{"Apply", func(ctx context.Context) error {
				_, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Put(e.key("apply"), val(3)), kvdriver.Delete(k)})
				return err
			}},
		}
		for _, call := range calls {
			ctx, cancel := c.ctx()
			begin := time.Now()
			err := call.call(ctx)
			took := time.Since(begin)
			cancel()
			if !errors.Is(err, c.want) {
				t.Errorf("%s with a %s context: err = %v, want an error wrapping %v", call.name, c.name, err, c.want)
			}
			if took > promptly {
				t.Errorf("%s with a %s context took %s, want under %s", call.name, c.name, took, promptly)
			}
		}
		e.wantGet(s, k, val(1), rev)
		e.wantNotFound(s, e.key("put"), "Put with a "+c.name+" context")
		e.wantNotFound(s, e.key("apply"), "Apply with a "+c.name+" context")

		// A watch with a dead context closes at once, delivering nothing.
		ctx, cancel := c.ctx()
		w := e.watch(ctx, s, e.prefix, rev-1)
		err := w.end(promptly)
		cancel()
		if err != nil && !errors.Is(err, c.want) {
			t.Errorf("%s with a %s context ended with %v, want a closed channel or %v", w.name, c.name, err, c.want)
		}
		if len(w.events) > 0 {
			t.Errorf("%s with a %s context delivered %s", w.name, c.name, fmtEvents(w.events))
		}
	}

	// A live watch closes when its context is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := e.watch(ctx, s, e.prefix, rev)
	r2 := e.put(s, e.key("live"), val(4))
	w.mustUntil(r2)
	cancel()
	if err := w.end(promptly); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("%s after cancel: ended with %v, want a closed channel or context.Canceled", w.name, err)
	}
	// And one with a deadline, when the deadline passes.
	dctx, dcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer dcancel()
	dw := e.watch(dctx, s, e.prefix, r2)
	if err := dw.end(promptly + 200*time.Millisecond); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s after its deadline: ended with %v, want a closed channel or context.DeadlineExceeded", dw.name, err)
	}
	// The store is still usable.
	e.wantGet(s, k, val(1), rev)
}

// testClose: Close is idempotent; afterwards every call fails with
// ErrClosed and open watches end; other stores are unaffected.
func testClose(e *env) {
	t := e.t
	s, other := e.store(), e.store()
	k := e.key("k")
	rev := e.put(s, k, val(1))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, s, e.prefix, rev-1)
	w.mustUntil(rev)

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v, want nil (Close is idempotent)", err)
	}
	if err := w.end(waitTimeout); err != nil && !errors.Is(err, kvdriver.ErrClosed) {
		t.Errorf("%s open across Close: ended with %v, want a closed channel or ErrClosed", w.name, err)
	}

	_, err := s.Get(e.ctx(), k)
	e.wantErr(err, kvdriver.ErrClosed, "Get after Close")
	_, err = s.Put(e.ctx(), e.key("after"), val(2))
	e.wantErr(err, kvdriver.ErrClosed, "Put after Close")
	_, err = s.Delete(e.ctx(), k)
	e.wantErr(err, kvdriver.ErrClosed, "Delete after Close")
	_, _, err = s.List(e.ctx(), e.prefix)
	e.wantErr(err, kvdriver.ErrClosed, "List after Close")
	_, err = s.Apply(e.ctx(), []kvdriver.Op{kvdriver.Put(e.key("after"), val(2))})
	e.wantErr(err, kvdriver.ErrClosed, "Apply after Close")
	err = s.Compact(e.ctx(), rev)
	e.wantErr(err, kvdriver.ErrClosed, "Compact after Close")
	w2 := e.watch(ctx, s, e.prefix, rev-1)
	if err := w2.end(promptly); !errors.Is(err, kvdriver.ErrClosed) {
		t.Errorf("Watch after Close: ended with %v, want a response with ErrClosed", err)
	}
	if len(w2.events) > 0 {
		t.Errorf("Watch after Close delivered %s", fmtEvents(w2.events))
	}
	_ = s.Limits() // still answers

	// Other stores on the same server go on.
	e.wantGet(other, k, val(1), rev)
	e.wantNotFound(other, e.key("after"), "Put after Close")
}

// testReconnect: with the server stopped, calls fail instead of hanging;
// after it restarts, a watch opened before the outage resumes where it
// was, nothing missed or repeated, and the stores work again.
func testReconnect(e *env) {
	t := e.t
	r := e.h.(Restarter)
	s, ws := e.store(), e.store()
	r1 := e.put(s, e.key("before"), val(1))
	ctx, _ := e.watchCtx()
	w := e.watch(ctx, ws, e.prefix, r1-1)
	w.mustUntil(r1)

	sctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	err := r.StopServer(sctx)
	cancel()
	if err != nil {
		t.Fatalf("StopServer: %v", err)
	}
	restarted := false
	defer func() {
		if !restarted {
			sctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			_ = r.StartServer(sctx)
		}
	}()

	gctx, cancel := context.WithTimeout(context.Background(), time.Second)
	begin := time.Now()
	_, err = s.Get(gctx, e.key("before"))
	cancel()
	if err == nil {
		t.Errorf("Get with the server stopped succeeded")
	}
	if took := time.Since(begin); took > time.Second+promptly {
		t.Errorf("Get with the server stopped and a 1s deadline took %s", took)
	}

	sctx, cancel = context.WithTimeout(context.Background(), opTimeout)
	err = r.StartServer(sctx)
	cancel()
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	restarted = true

	// Retry a write until the store has reconnected. A failed attempt may
	// still have been applied, so each attempt writes its own key.
	deadline := time.Now().Add(opTimeout)
	var want []kvdriver.Event
	maybe := map[string]bool{}
	for attempt := 0; ; attempt++ {
		k := e.key("retry", fmt.Sprint(attempt))
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		rev, err := s.Put(pctx, k, val(attempt))
		cancel()
		if err == nil {
			want = append(want, putEv(k, val(attempt), rev))
			break
		}
		maybe[k] = true
		if time.Now().After(deadline) {
			t.Fatalf("Put still failing %s after the restart: %v", opTimeout, err)
		}
		time.Sleep(100 * time.Millisecond) // retry pacing, not a readiness wait
	}
	for i := 0; i < 5; i++ {
		k := e.key("after", fmt.Sprint(i))
		want = append(want, putEv(k, val(i), e.put(s, k, val(i))))
	}
	w.mustUntil(want[len(want)-1].Revision)
	var got []kvdriver.Event
	for _, ev := range w.events[1:] {
		if !maybe[ev.Key] {
			got = append(got, ev)
		}
	}
	wantEvents(t, w.name+" across the restart", got, want)
	if w.events[0].Revision != r1 {
		t.Errorf("%s: first event at revision %d, want %d", w.name, w.events[0].Revision, r1)
	}

	// Both stores work again, and history survived.
	e.wantGet(ws, e.key("after", "4"), val(4), want[len(want)-1].Revision)
	e.wantGet(s, e.key("before"), val(1), r1)
	w2 := e.watch(ctx, ws, e.prefix, r1-1)
	w2.mustUntil(want[len(want)-1].Revision)
	if len(w2.events) != len(w.events) {
		t.Errorf("%s after the restart replayed %d events, the watch across it saw %d", w2.name, len(w2.events), len(w.events))
	}
}
