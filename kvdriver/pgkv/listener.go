package pgkv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotifyUnavailable is what Store.NotifyErr wraps when the listener's
// probe notification did not come back: typically a transaction-pooling
// proxy between the driver and PostgreSQL. Watches then see changes only
// when they poll (every PollInterval).
var ErrNotifyUnavailable = errors.New("pgkv: LISTEN/NOTIFY does not work on this connection")

var errListenerPending = errors.New("pgkv: listener not started or not verified yet")

// listener is the store's one LISTEN connection, shared by all its
// watches. It carries no data: a notification (or a reconnect) only wakes
// the watches, which read the change log themselves. Losing notifications
// therefore delays a watch, it never makes it miss an event.
type listener struct {
	s *Store

	mu      sync.Mutex
	started bool
	subs    map[chan struct{}]struct{}

	status atomic.Pointer[error] // nil error: notifications verified
}

func newListener(s *Store) *listener {
	l := &listener{s: s, subs: map[chan struct{}]struct{}{}}
	err := errListenerPending
	if !s.cfg.Listen {
		err = fmt.Errorf("%w: listen=false, watches poll every %s", ErrNotifyUnavailable, s.cfg.PollInterval)
	}
	l.status.Store(&err)
	return l
}

// NotifyErr reports whether the store's watches are woken by notifications:
// nil once the listener has received its own probe NOTIFY, otherwise why
// not (not started yet: the listener connects with the first Watch; still
// connecting; connection lost; or an error wrapping ErrNotifyUnavailable).
// Watches work either way, polling when they must.
func (s *Store) NotifyErr() error { return *s.listener.status.Load() }

func (l *listener) setStatus(err error) { l.status.Store(&err) }

// subscribe registers a wake channel, starting the listener on first use.
func (l *listener) subscribe() (wake chan struct{}, unsubscribe func()) {
	wake = make(chan struct{}, 1)
	l.mu.Lock()
	l.subs[wake] = struct{}{}
	if !l.started && l.s.cfg.Listen {
		l.started = true
		l.s.wg.Add(1)
		go l.run()
	}
	l.mu.Unlock()
	return wake, func() {
		l.mu.Lock()
		delete(l.subs, wake)
		l.mu.Unlock()
	}
}

func (l *listener) wakeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch := range l.subs {
		select {
		case ch <- struct{}{}:
		default: // a wake is already pending
		}
	}
}

// run keeps a LISTEN session up, reconnecting with capped backoff.
func (l *listener) run() {
	defer l.s.wg.Done()
	ctx := l.s.ctx
	backoff := initialReconnectBackoff
	for {
		err := l.session(ctx, &backoff)
		if ctx.Err() != nil {
			return
		}
		l.setStatus(fmt.Errorf("pgkv: listener disconnected, reconnecting: %w", err))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxReconnectBackoff)
	}
}

// session connects, LISTENs, probes and relays notifications until the
// connection fails.
func (l *listener) session(ctx context.Context, backoff *time.Duration) error {
	cc := l.s.connCfg.Copy()
	cc.RuntimeParams["application_name"] = listenerApplicationName
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cc)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	channel := l.s.cfg.channel()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Our own NOTIFY comes back to us on a real session; through a
	// transaction-pooling proxy LISTEN stays on a server connection we no
	// longer hold, and the probe never arrives.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	probe := "probe:" + hex.EncodeToString(rnd[:])
	if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", channel, probe); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	probeDeadline := time.Now().Add(l.s.cfg.ProbeTimeout)
	probed := false
	// From here on every commit notifies us; whatever committed before
	// (while disconnected) is caught up by the watches now.
	l.wakeAll()
	*backoff = initialReconnectBackoff
	for {
		wait := l.s.cfg.PollInterval
		if !probed {
			wait = min(wait, time.Until(probeDeadline))
		}
		wctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
		n, err := conn.WaitForNotification(wctx)
		timedOut := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if timedOut {
			if !probed && !time.Now().Before(probeDeadline) {
				probed = true
				l.setStatus(fmt.Errorf("%w: the probe notification did not come back within %s (a transaction-pooling proxy?); watches poll every %s", ErrNotifyUnavailable, l.s.cfg.ProbeTimeout, l.s.cfg.PollInterval))
			}
			// A silent connection may be dead (no RST after a server
			// crash or a network partition): check it.
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if n.Payload == probe {
			probed = true
			l.setStatus(nil)
			continue
		}
		l.wakeAll()
	}
}
