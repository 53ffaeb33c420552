package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
)

// Status is a snapshot of the agent's progress, for health checks and tests.
type Status struct {
	// Checkpoint is the last checkpoint the store acknowledged.
	Checkpoint pglogrepl.LSN
	// Confirmed is the last position confirmed to PostgreSQL.
	Confirmed pglogrepl.LSN
	// Streaming is true while the replication stream runs.
	Streaming bool
	// Transactions counts the transactions applied since New.
	Transactions int64
	// Err is the error that ended the last session; nil once a session
	// streams again.
	Err error
	// StoreErr is the last failed store write or list, being retried;
	// nil after the next success.
	StoreErr error
	// RetainedWAL is how many bytes of WAL the slot holds back, as of the
	// last publication poll.
	RetainedWAL int64
	// Active is true while this agent holds its slot's agent lock (the
	// active role); false while it waits as a standby or reconnects.
	Active bool
	// Standby is true while the agent waits for another agent of its
	// slot to go (it holds the slot's agent lock).
	Standby bool
	// LagBytes is how much WAL the server has that the store does not
	// (the server's WAL end, as last reported, minus the applied position).
	LagBytes int64
	// Blocked is the change the agent cannot mirror and retries, holding
	// back everything after it, until it is skipped (see ValueError); nil
	// otherwise. BlockedSince is when that began.
	Blocked      *ValueError
	BlockedSince time.Time
	// SystemID and Timeline are the database's, as the last session
	// found them (IDENTIFY_SYSTEM).
	SystemID string
	Timeline int32
	// WaitingForStandbys is the commit the agent waits for the standbys
	// of Config.SyncStandbys to flush before applying it (0: none).
	WaitingForStandbys pglogrepl.LSN
}

// Agent mirrors the published tables of a Lenkwerk database into a store.
type Agent struct {
	cfg     Config
	mapper  *keymap.Mapper
	log     *slog.Logger
	ckptKey string

	mu     sync.Mutex
	status Status
	// pendingSince is the commit time of the transaction being applied
	// (zero between transactions); lastLag is the apply lag of the last
	// transaction, zero once a keepalive showed the stream caught up.
	pendingSince time.Time
	lastLag      time.Duration
	// blockedLogged is when a block was last logged; blockedUntil the
	// checkpoint past which it is over (see blocked).
	blockedLogged time.Time
	blockedUntil  pglogrepl.LSN

	met agentMetrics

	// walWarned is when the retained-WAL warning was last logged. Only the
	// session goroutine uses it (one session at a time).
	walWarned time.Time
	// undecodable is set when streaming failed on a slot PostgreSQL can
	// no longer decode: the next session replaces the slot (session
	// goroutine only, like walWarned).
	undecodable bool
	// slotWALGone is set when the server could not stream the slot because
	// the WAL it needs is gone (a slot copied to a promoted standby that
	// did not keep that WAL): the next session copies again.
	slotWALGone bool
}

// New checks cfg and returns an agent; it connects to nothing.
func New(cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if cfg.DatabaseURL == "" {
		return nil, errors.New("agent: no database URL")
	}
	if cfg.Store == nil {
		return nil, errors.New("agent: no store")
	}
	if !slotName.MatchString(cfg.Slot) {
		return nil, fmt.Errorf("agent: invalid slot name %q (want 1-63 of a-z, 0-9, _)", cfg.Slot)
	}
	if !publicationName.MatchString(cfg.Publication) {
		return nil, fmt.Errorf("agent: invalid publication name %q (want a lower-case identifier)", cfg.Publication)
	}
	if _, err := pgconn.ParseConfig(cfg.DatabaseURL); err != nil {
		return nil, fmt.Errorf("agent: invalid database URL: %w", err)
	}
	if err := CheckSyncStandbys(cfg.SyncStandbys); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	m, err := keymap.New(cfg.Prefix, cfg.Templates)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// Cleaned once here (by keymap.New): the agent's own keys are built
	// from cfg.Prefix.
	cfg.Prefix = m.Prefix()
	if cfg.Metrics == nil {
		// Unregistered: the agent counts into the void.
		if cfg.Metrics, err = NewMetrics(prometheus.NewRegistry()); err != nil {
			return nil, err
		}
	}
	log := cfg.Logger.With("slot", cfg.Slot)
	if cfg.Name != "default" {
		log = log.With("store", cfg.Name)
	}
	a := &Agent{
		cfg:     cfg,
		mapper:  m,
		log:     log,
		ckptKey: CheckpointKey(cfg.Prefix, cfg.Slot),
		met:     cfg.Metrics.forStore(cfg.Name),
	}
	cfg.Metrics.live.add(a)
	return a, nil
}

// StoreSlot is the slot of an extra store named name when the agent fans
// out from slot: "<slot>_<name>". Store names are 1-30 of a-z, 0-9, _.
func StoreSlot(slot, name string) string { return slot + "_" + name }

// lagSeconds is the age of the oldest change not yet in the store: the
// commit time of the transaction being applied (or, blocked, of the
// change the agent cannot mirror), else the last transaction's apply lag
// until a keepalive shows the stream caught up.
func (a *Agent) lagSeconds(now time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	lag := a.lastLag
	if !a.pendingSince.IsZero() {
		lag = max(lag, now.Sub(a.pendingSince))
	}
	if b := a.status.Blocked; b != nil {
		since := b.CommitTime
		if since.IsZero() { // a table copy
			since = a.status.BlockedSince
		}
		lag = max(lag, now.Sub(since))
	}
	return max(lag, 0)
}

// Ready reports whether the agent streams as the active agent of its slot
// with a lag below maxLag; otherwise it says why not, in one line.
func (a *Agent) Ready(maxLag time.Duration) (bool, string) {
	st := a.Status()
	switch {
	case st.Blocked != nil:
		return false, fmt.Sprintf("blocked since %s: %v; way out: %s", st.BlockedSince.UTC().Format(time.RFC3339), st.Blocked, st.Blocked.WayOut(a.cfg.Slot, a.cfg.Prefix))
	case st.Standby:
		return false, "standby: another agent holds the slot's lock"
	case !st.Active && st.Err != nil:
		return false, "not connected: " + st.Err.Error()
	case !st.Active:
		return false, "not connected yet"
	case !st.Streaming:
		if st.Err != nil {
			return false, "not streaming: " + st.Err.Error()
		}
		return false, "not streaming yet (initial sync or connecting)"
	}
	if lag := a.lagSeconds(time.Now()); lag >= maxLag {
		return false, fmt.Sprintf("lagging %v behind the database (bound %v)", lag.Round(time.Millisecond), maxLag)
	}
	if st.StoreErr != nil {
		return false, "store failing: " + st.StoreErr.Error()
	}
	return true, "streaming"
}

// Status returns the agent's current progress.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

func (a *Agent) update(f func(*Status)) {
	a.mu.Lock()
	f(&a.status)
	a.mu.Unlock()
}

// Run mirrors the database into the store until ctx is done, then returns
// nil. Every failure (PostgreSQL or store unreachable, slot in use by
// another agent, a row that cannot be mirrored) is logged, and the agent
// reconnects after a capped, jittered backoff and resumes from the store's
// checkpoint; it never skips a change.
func (a *Agent) Run(ctx context.Context) error {
	bo := backoff{min: a.cfg.MinBackoff, max: a.cfg.MaxBackoff}
	for {
		err := a.session(ctx, false)
		if ctx.Err() != nil {
			return nil
		}
		// A session that reached streaming worked: the next failure is a
		// new one, not a repeat of this one's cause (unless it is the
		// same change that cannot be mirrored, again).
		var ve *ValueError
		errors.As(err, &ve)
		if st := a.Status(); st.Streaming && (ve == nil || !ve.same(st.Blocked)) {
			bo.reset()
		}
		a.update(func(s *Status) { s.Err = err; s.Streaming = false })
		kind := errorKind(err)
		a.met.reconnects.WithLabelValues(kind).Inc()
		if kind != kindStore { // failed store attempts are counted as they happen
			a.met.errs.WithLabelValues(kind).Inc()
		}
		var d time.Duration
		switch {
		case isSlotActive(err):
			// A standby must take over within seconds: no growing backoff.
			d = (standbyBackoff{a.cfg.StandbyRetry}).next()
			a.log.Info("replication slot is used by another consumer; waiting", "retry_in", d, "err", err)
		case ve != nil:
			d = bo.next()
			a.blocked(ve, d)
		default:
			d = bo.next()
			if unreachable(err) {
				d = min(d, max(a.cfg.MinBackoff, maxUnreachableWait))
			}
			a.log.Error("agent session failed; reconnecting", "retry_in", d, "err", err)
		}
		if a.pause(ctx, d, ve) {
			return nil
		}
	}
}

// Resync copies every published table again from a fresh snapshot: it
// removes the store's checkpoint, recreates the slot with an exported
// snapshot, copies, deletes keys of the agent's key space that match no
// row and writes the new checkpoint. The slot must not be in use (stop the
// agent first); the next Run streams from the new checkpoint.
func Resync(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	if err := a.session(ctx, true); err != nil {
		if isSlotActive(err) {
			return fmt.Errorf("%w: stop the agent first", err)
		}
		return err
	}
	return nil
}

// session runs one connection's worth of work: connect, initial sync when
// needed (or forced), stream. It returns nil only when ctx is done (or, when
// syncOnly, after the sync).
func (a *Agent) session(ctx context.Context, syncOnly bool) (err error) {
	s, err := a.openSession(ctx, !syncOnly)
	if err != nil {
		return err
	}
	defer func() {
		s.close()
		// A batch in flight when the session ended for another reason
		// (its walsender terminated by a take-over) may come back
		// fenced: then that is what ended this agent's turn.
		if perr := s.pipe.failure(); errors.Is(perr, kvdriver.ErrConflict) && !errors.Is(err, kvdriver.ErrConflict) {
			err = errors.Join(err, perr)
		}
	}()
	s.pipe.start(ctx)
	if syncOnly {
		return s.initialSync(ctx)
	}
	if err := s.waitSlotFree(ctx); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.ApplyTimeout)
	ck, fence, ok, err := readCheckpoint(rctx, a.cfg.Store, a.ckptKey)
	cancel()
	a.update(func(st *Status) { st.StoreErr = err })
	if err != nil {
		return &storeError{err}
	}
	s.w.fence = fence
	cause := resyncNoCheckpoint
	if ok && a.undecodable {
		a.log.Warn("replication slot cannot be decoded (could not map filenode): replacing it and copying every table again", "cause", resyncUndecodable, "checkpoint", ck.LSN)
		ok, cause = false, resyncUndecodable
	}
	if ok {
		if cause, err = s.checkResume(ctx, ck); err != nil {
			return err
		}
	}
	if cause != "" {
		a.met.resyncs.WithLabelValues(cause).Inc()
		if err := s.initialSync(ctx); err != nil {
			return err
		}
		a.undecodable = false
	} else {
		s.setCheckpoint(ck)
	}
	s.refreshLag(ctx)
	err = s.stream(ctx)
	if isUndecodable(err) {
		a.undecodable = true
	}
	if isWALRemoved(err) {
		a.slotWALGone = true
	}
	return err
}

// isUndecodable reports the error of a slot whose catalog snapshot misses
// a relation's file node: PostgreSQL 15 gives it on every decoding of the
// same transaction, across restarts, so only a new slot (and a copy)
// gets past it. A TRUNCATE committed while the slot was being created
// causes it (see initialSync).
func isUndecodable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InternalError && strings.HasPrefix(pgErr.Message, "could not map filenode")
}

// isWALRemoved reports the server's "requested WAL segment … has already
// been removed" (undefined_file): the slot cannot be streamed, ever.
func isWALRemoved(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedFile && strings.Contains(pgErr.Message, "requested WAL segment")
}

// ErrSlotInUse: another consumer streams the slot, or another agent holds
// its lock (the agent is then a standby).
var ErrSlotInUse = errors.New("replication slot in use")

// isSlotActive reports ErrSlotInUse or PostgreSQL's "replication slot … is
// active for PID …" (object_in_use), which another consumer of the slot
// causes.
func isSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.Is(err, ErrSlotInUse) || (errors.As(err, &pgErr) && pgErr.Code == pgerrcode.ObjectInUse)
}
