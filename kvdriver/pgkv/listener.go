package pgkv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
)

// ErrNotifyUnavailable is what NotifyErr wraps when the listener's
// probe notification did not come back: typically a transaction-pooling
// proxy between the driver and PostgreSQL. Watches then see changes only
// when they poll (every PollInterval).
var ErrNotifyUnavailable = errors.New("pgkv: LISTEN/NOTIFY does not work on this connection")

var errListenerPending = errors.New("pgkv: listener not started or not verified yet")

// listener keeps the store's read connection (sharedPool) LISTENing on
// the channel while nobody else uses it, for all the store's watches. It
// carries no data: a notification (or a reconnect) only wakes the watches,
// which read the change log themselves. Losing notifications therefore
// delays a watch, it never makes it miss an event.
type listener struct {
	s       *Driver
	appName string // the connection's application_name while it listens

	mu      sync.Mutex
	started bool
	subs    map[chan struct{}]struct{}

	status atomic.Pointer[error] // nil error: notifications verified
	probe  atomic.Pointer[string]

	// Users of the shared connection: active counts those waiting for
	// or holding it; drained gets a token when it drops to 0. The
	// listener waits only after checking active under wmu, and enter
	// cancels that wait under wmu, so no user waits on a listener that
	// missed its arrival.
	active     atomic.Int64
	drained    chan struct{}
	wmu        sync.Mutex
	cancelWait context.CancelFunc
}

func newListener(s *Driver, appName string) *listener {
	if appName == defaultApplicationName {
		appName = listenerApplicationName
	} else {
		appName += "-listen"
	}
	l := &listener{s: s, appName: appName, subs: map[chan struct{}]struct{}{}, drained: make(chan struct{}, 1)}
	err := errListenerPending
	if !s.cfg.Listen {
		err = fmt.Errorf("%w: listen=false, watches poll every %s", ErrNotifyUnavailable, s.cfg.PollInterval)
	}
	l.status.Store(&err)
	return l
}

// enter announces a user of the shared connection and interrupts the
// listener's wait so it hands the connection over.
func (l *listener) enter() {
	l.active.Add(1)
	l.wmu.Lock()
	if l.cancelWait != nil {
		l.cancelWait()
	}
	l.wmu.Unlock()
}

func (l *listener) leave() {
	if l.active.Add(-1) == 0 {
		select {
		case l.drained <- struct{}{}:
		default: // a token is already there
		}
	}
}

// notified handles a notification on the shared connection, whoever was
// reading from it.
func (l *listener) notified(n *pgconn.Notification) {
	if p := l.probe.Load(); p != nil && n.Payload == *p {
		l.setStatus(nil)
		return
	}
	if rev, ok := l.s.syncNotification(n.Payload); ok {
		l.s.noteDurable(rev)
	}
	l.wakeAll()
}

// NotifyErr reports whether the store's watches are woken by notifications
// (see Driver.NotifyErr); it is nil for a store of another driver.
func NotifyErr(s *kvdriver.Store) error {
	var d *Driver
	if !s.As(&d) {
		return nil
	}
	return d.NotifyErr()
}

// NotifyErr reports whether the store's watches are woken by notifications:
// nil once the listener has received its own probe NOTIFY, otherwise why
// not (not started yet: the listener connects with the first Watch; still
// connecting; connection lost; or an error wrapping ErrNotifyUnavailable).
// Watches work either way, polling when they must.
func (s *Driver) NotifyErr() error { return *s.listener.status.Load() }

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
	bo := backoff.Backoff{Min: initialReconnectBackoff, Max: maxReconnectBackoff}
	for {
		err := l.session(ctx, &bo)
		if ctx.Err() != nil {
			return
		}
		l.setStatus(fmt.Errorf("pgkv: listener disconnected, reconnecting: %w", err))
		if !bo.Wait(ctx) {
			return
		}
	}
}

// session takes the shared connection whenever nobody else uses it,
// LISTENs on it (again whenever the pool replaced it), probes, and waits
// for notifications, until the connection fails.
func (l *listener) session(ctx context.Context, bo *backoff.Backoff) error {
	channel := l.s.cfg.channel()
	var (
		listeningPID  uint32
		probeDeadline time.Time
		probed        bool
	)
	for {
		for l.active.Load() > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-l.drained:
			}
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := l.s.pool.pool.Acquire(actx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("connect: %w", err)
		}
		if pid := c.Conn().PgConn().PID(); pid != listeningPID {
			if listeningPID != 0 {
				l.setStatus(errors.New("pgkv: listener connection replaced, verifying notifications"))
			}
			if err := l.listen(ctx, c.Conn(), channel); err != nil {
				c.Release()
				return err
			}
			listeningPID, probeDeadline, probed = pid, time.Now().Add(l.s.cfg.ProbeTimeout), false
			// From here on every commit notifies us; whatever committed
			// before (while disconnected) is caught up by the watches now.
			l.wakeAll()
			bo.Reset()
		}
		err = l.wait(ctx, c, &probed, probeDeadline)
		c.Release()
		if err != nil {
			return err
		}
	}
}

// listen LISTENs on conn and sends the probe.
func (l *listener) listen(ctx context.Context, conn *pgx.Conn, channel string) error {
	if _, err := conn.Exec(ctx, "SET application_name TO "+quoteLiteral(l.appName)); err != nil {
		return fmt.Errorf("set application_name: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Our own NOTIFY comes back to us on a real session; through a
	// transaction-pooling proxy LISTEN stays on a server connection we no
	// longer hold, and the probe never arrives.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	probe := "probe:" + hex.EncodeToString(rnd[:])
	l.probe.Store(&probe)
	if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", channel, probe); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	return nil
}

// wait waits for notifications on the held connection until a user of
// the shared connection wants it (nil error: hand it over) or it fails.
func (l *listener) wait(ctx context.Context, c *pgxpool.Conn, probed *bool, probeDeadline time.Time) error {
	for {
		if !*probed && l.status.Load() != nil && *l.status.Load() == nil {
			*probed = true
		}
		wait := l.s.cfg.PollInterval
		if !*probed {
			wait = min(wait, time.Until(probeDeadline))
		}
		l.wmu.Lock()
		if l.active.Load() > 0 {
			l.wmu.Unlock()
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
		l.cancelWait = cancel
		l.wmu.Unlock()
		// Notifications go to notified (the connection's OnNotification).
		err := c.Conn().PgConn().WaitForNotification(wctx)
		l.wmu.Lock()
		l.cancelWait = nil
		l.wmu.Unlock()
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
		handOver := errors.Is(wctx.Err(), context.Canceled)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			continue
		case handOver:
			return nil
		case !timedOut:
			return fmt.Errorf("wait for notification: %w", err)
		}
		if !*probed && !time.Now().Before(probeDeadline) {
			*probed = true
			l.setStatus(fmt.Errorf("%w: the probe notification did not come back within %s (a transaction-pooling proxy?); watches poll every %s", ErrNotifyUnavailable, l.s.cfg.ProbeTimeout, l.s.cfg.PollInterval))
		}
		// A silent connection may be dead (no RST after a server crash or
		// a network partition): check it.
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.Ping(pctx)
		pcancel()
		if err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
