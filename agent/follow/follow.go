package follow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
)

// Defaults of Config.
const (
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// maxLoggedKeys bounds the memory spent remembering which unknown keys
	// were logged: a hostile store could hold any number.
	maxLoggedKeys = 10000
)

// Config configures a Follower.
type Config struct {
	// DatabaseURL is the local copy (postgres://…): a database provisioned
	// as a copy (migrations.Options.Copy), never the Lenkwerk database of
	// record, which Run refuses. The role needs to write the templates'
	// tables and lenkwerk.follow_state.
	DatabaseURL string
	// Store is watched. The caller opens and closes it.
	Store *kvdriver.Store
	// StoreName identifies the store in the checkpoint (use
	// kvdriver.Redact of its URL): a checkpoint of another store is not
	// resumed from, the copy is reconciled instead.
	StoreName string
	// Prefix and Templates are the agent's (keymap.New).
	Prefix    string
	Templates map[string]string
	// Migrate provisions or upgrades the local copy at start
	// (migrations.Up with Copy); it needs a superuser.
	Migrate bool
	// Logger receives the follower's logs; default slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before reconnecting.
	MinBackoff, MaxBackoff time.Duration
}

// Follower keeps a local copy equal to the store.
type Follower struct {
	cfg    Config
	mapper *keymap.Mapper
	log    *slog.Logger

	revision atomic.Int64
	skipped  atomic.Int64
	npending atomic.Int64
	migrated bool
	// pending are changes refused for a missing parent or a remaining
	// child (a foreign key), retried after every revision; owned by Run.
	pending []pendingOp

	mu     sync.Mutex
	logged map[string]bool // keys and tables already logged as unusable
}

// Status is what the follower has done so far.
type Status struct {
	// Revision is the store revision the local copy is at (0: none yet),
	// as its checkpoint says: while changes are Pending it stays before the
	// oldest of them.
	Revision int64
	// Pending counts changes waiting for a row they reference to arrive,
	// or for rows referencing them to go (foreign keys): an agent
	// transaction larger than one store batch reaches the store in several
	// revisions.
	Pending int
	// Skipped counts the puts and deletes not applied: keys no template
	// matches, values that are not rows of their key, data the local table
	// refuses.
	Skipped int64
}

// New checks cfg and returns a Follower; Run starts it.
func New(cfg Config) (*Follower, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("follow: no database URL")
	}
	if cfg.Store == nil {
		return nil, errors.New("follow: no store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	m, err := keymap.New(cfg.Prefix, cfg.Templates)
	if err != nil {
		return nil, fmt.Errorf("follow: %w", err)
	}
	// Cleaned once here (by keymap.New): the checkpoint's and reserved
	// keys are built from cfg.Prefix.
	cfg.Prefix = m.Prefix()
	return &Follower{cfg: cfg, mapper: m, log: cfg.Logger, logged: map[string]bool{}}, nil
}

// Status reports the follower's progress; safe for concurrent use.
func (f *Follower) Status() Status {
	return Status{Revision: f.revision.Load(), Skipped: f.skipped.Load(), Pending: int(f.npending.Load())}
}

// errPermanent marks errors reconnecting cannot fix.
type errPermanent struct{ error }

func (e errPermanent) Unwrap() error { return e.error }

// Run follows the store until ctx is done, then returns nil. Failures of the
// store or the database end the session, which is started again after a
// capped, jittered backoff; a database that is not a copy ends Run with an
// error.
func (f *Follower) Run(ctx context.Context) error {
	bo := backoff.Backoff{Min: f.cfg.MinBackoff, Max: f.cfg.MaxBackoff, Jitter: true}
	for {
		start := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var perm errPermanent
		if errors.As(err, &perm) {
			return perm.error
		}
		if time.Since(start) > f.cfg.MaxBackoff {
			bo.Reset() // it ran a while: start over
		}
		d := bo.Next()
		f.log.Warn("follow: session ended, reconnecting", "err", err, "in", d.Round(time.Millisecond))
		if !backoff.Sleep(ctx, d) {
			return nil
		}
	}
}

// listPrefix is what the follower lists and watches.
func (f *Follower) listPrefix() string {
	if f.cfg.Prefix == "" {
		return "/"
	}
	return f.cfg.Prefix
}

// session connects, catches up and applies the watch until an error.
func (f *Follower) session(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, f.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to the local copy %s: %w", kvdriver.Redact(f.cfg.DatabaseURL), err)
	}
	defer conn.Close(context.Background())
	// to_jsonb of timestamptz depends on it; the agent writes UTC.
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		return fmt.Errorf("set TimeZone: %w", err)
	}
	// Checked before migrating too: never touch the database of record.
	names, err := migrations.Names(ctx, conn)
	if err != nil {
		return err
	}
	if names != nil && !names.Copy {
		return errPermanent{fmt.Errorf("follow: the database is a Lenkwerk source (publication %q), not a local copy: refusing to write to it", names.Publication)}
	}
	if f.cfg.Migrate && !f.migrated {
		if err := migrations.Up(ctx, f.cfg.DatabaseURL, migrations.Options{Copy: true}); err != nil {
			return fmt.Errorf("migrate the local copy: %w", err)
		}
		f.migrated = true
		if names, err = migrations.Names(ctx, conn); err != nil {
			return err
		}
	}
	if names == nil || !names.Copy {
		return errPermanent{errors.New("follow: the database is not a Lenkwerk copy (not migrated: run with migrate, or migrate it as a copy)")}
	}
	// What was pending is replayed from the checkpoint, which stayed
	// before it.
	f.pending = nil
	tables, err := f.resolve(ctx, conn)
	if err != nil {
		return err
	}
	r := newRouter(f.cfg.Prefix, tables)

	store, rev, ok, err := loadCheckpoint(ctx, conn, f.cfg.Prefix)
	if err != nil {
		return err
	}
	switch {
	case !ok:
		f.log.Info("follow: no checkpoint, loading the store")
	case store != f.cfg.StoreName:
		f.log.Info("follow: checkpoint is of another store, reconciling", "checkpoint_store", store, "store", f.cfg.StoreName)
		ok = false
	default:
		// A store restored or replaced can be behind the checkpoint; a
		// watch from the checkpoint would then wait for revisions that
		// are not the ones applied.
		_, cur, err := f.cfg.Store.List(ctx, f.cfg.Prefix+"/"+reservedProbe)
		if err != nil {
			return fmt.Errorf("read the store revision: %w", err)
		}
		if cur < rev {
			f.log.Warn("follow: the store is behind the checkpoint (restored or replaced?), reconciling", "checkpoint", rev, "store_revision", cur)
			ok = false
		}
	}
	if !ok {
		if rev, err = f.reconcile(ctx, conn, r); err != nil {
			return err
		}
	} else {
		f.revision.Store(rev)
		f.log.Info("follow: resuming from checkpoint", "revision", rev)
	}
	for {
		err := f.watch(ctx, conn, r, rev)
		if !errors.Is(err, kvdriver.ErrCompacted) {
			return err
		}
		f.log.Warn("follow: the store's history is compacted past our revision, reconciling", "err", err)
		if rev, err = f.reconcile(ctx, conn, r); err != nil {
			return err
		}
	}
}

// reservedProbe is a key under the agent's reserved subtree that is never
// written: listing it is a cheap way to learn the store's revision.
const reservedProbe = ".lenkwerk/follow-probe"

// resolve finds the templates' tables; a template whose table is missing
// or refused is logged (once) and its keys are then unknown.
func (f *Follower) resolve(ctx context.Context, conn *pgx.Conn) ([]*table, error) {
	var tables []*table
	for _, tmpl := range f.mapper.Templates() {
		t, err := resolveTable(ctx, conn, tmpl)
		if err != nil {
			if ctx.Err() != nil || conn.IsClosed() {
				return nil, err
			}
			f.logOnce(slog.LevelError, "table:"+tmpl.Table(), "follow: template unusable, its keys are skipped", "err", err)
			continue
		}
		tables = append(tables, t)
	}
	if err := rankTables(ctx, conn, tables); err != nil {
		return nil, err
	}
	return tables, nil
}

// logOnce logs at level the first time id is seen.
func (f *Follower) logOnce(level slog.Level, id, msg string, args ...any) {
	f.mu.Lock()
	seen := f.logged[id]
	if !seen && len(f.logged) < maxLoggedKeys {
		f.logged[id] = true
	}
	f.mu.Unlock()
	if !seen {
		f.log.Log(context.Background(), level, msg, args...)
	}
}

// routeAll routes a revision's changes, coalesced per key (the last
// wins), logging and counting what cannot be applied.
func (f *Follower) routeAll(r *router, evs []kvdriver.Event) []op {
	last := map[string]int{}
	for i, ev := range evs {
		last[ev.Key] = i
	}
	ops := make([]op, 0, len(evs))
	for i, ev := range evs {
		if last[ev.Key] != i {
			continue
		}
		o, err := r.route(ev.Type, ev.Key, ev.Value)
		if errors.Is(err, errIgnored) {
			continue
		}
		if err != nil {
			f.skipped.Add(1)
			f.logOnce(slog.LevelError, "key:"+ev.Key, "follow: key skipped", "key", ev.Key, "err", err)
			continue
		}
		if len(o.extra) > 0 {
			// A column the source has and the copy lacks (not migrated
			// yet?) or junk: the row is written without it.
			f.logOnce(slog.LevelWarn, "extra:"+o.t.name+":"+strings.Join(o.extra, ","), "follow: value has fields that are not columns of "+o.t.name+", left out",
				"key", o.key, "fields", o.extra)
		}
		ops = append(ops, o)
	}
	return ops
}

// pendingOp is a change refused by a foreign key, and the revision that
// brought it.
type pendingOp struct {
	op  op
	rev int64
}

// refuse returns the callback applyRevision reports refused ops to: those
// a foreign key refused wait in pending (the rest of an agent transaction
// split over several store batches may bring the parent, or delete the
// children), the others are logged and skipped.
func (f *Follower) refuse(rev func(key string) int64) func(op, error) {
	return func(o op, err error) {
		if pgErr, ok := dataError(err); ok && pgErr.Code == pgerrcode.ForeignKeyViolation {
			f.pending = append(f.pending, pendingOp{op: o, rev: rev(o.key)})
			f.logOnce(slog.LevelWarn, "pending:"+o.key, "follow: change waits for a row it references, or for rows referencing it, to arrive or go; the checkpoint stays before it meanwhile",
				"key", o.key, "table", o.t.name, "err", err)
			return
		}
		f.skipped.Add(1)
		f.log.Error("follow: change refused by the local table, skipped (the row keeps its previous value)", "key", o.key, "table", o.t.name, "err", err)
	}
}

// supersede drops the pending changes of keys ops change again.
func (f *Follower) supersede(ops []op) {
	if len(f.pending) == 0 {
		return
	}
	keys := make(map[string]bool, len(ops))
	for _, o := range ops {
		keys[o.key] = true
	}
	kept := f.pending[:0]
	for _, p := range f.pending {
		if !keys[p.op.key] {
			kept = append(kept, p)
		}
	}
	f.pending = kept
}

// retryPending applies the pending changes again, after a revision.
func (f *Follower) retryPending(ctx context.Context, tx pgx.Tx) error {
	if len(f.pending) == 0 {
		return nil
	}
	prev := f.pending
	f.pending = nil
	revs := make(map[string]int64, len(prev))
	ops := make([]op, len(prev))
	for i, p := range prev {
		revs[p.op.key], ops[i] = p.rev, p.op
	}
	if _, err := applyRevision(ctx, tx, ops, f.refuse(func(k string) int64 { return revs[k] })); err != nil {
		return fmt.Errorf("retry pending changes: %w", err)
	}
	if n := len(prev) - len(f.pending); n > 0 {
		f.log.Info("follow: pending changes applied", "changes", n, "still_pending", len(f.pending))
	}
	return nil
}

// checkpointFor is the revision to record once rev is applied: before the
// oldest pending change, so that a restart replays it (replaying applied
// revisions rewrites the same final values).
func (f *Follower) checkpointFor(rev int64) int64 {
	for _, p := range f.pending {
		rev = min(rev, p.rev-1)
	}
	return rev
}

// watch applies the watch from rev on until an error.
func (f *Follower) watch(ctx context.Context, conn *pgx.Conn, r *router, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range f.cfg.Store.Watch(wctx, f.listPrefix(), rev) {
		if resp.Err != nil {
			return fmt.Errorf("watch from revision %d: %w", rev, resp.Err)
		}
		if resp.Revision <= rev && len(resp.Events) == 0 {
			continue
		}
		if err := f.applyResponse(ctx, conn, r, resp); err != nil {
			return err
		}
		rev = max(rev, resp.Revision)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch from revision %d ended", rev)
}

// applyResponse applies one watch response and its checkpoint in one
// transaction, revision by revision.
func (f *Follower) applyResponse(ctx context.Context, conn *pgx.Conn, r *router, resp kvdriver.WatchResponse) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	evs := resp.Events
	for len(evs) > 0 {
		n := 1
		for n < len(evs) && evs[n].Revision == evs[0].Revision {
			n++
		}
		ops, evRev := f.routeAll(r, evs[:n]), evs[0].Revision
		f.supersede(ops)
		how, err := applyRevision(ctx, tx, ops, f.refuse(func(string) int64 { return evRev }))
		if err != nil {
			return fmt.Errorf("apply revision %d: %w", evRev, err)
		}
		if how != inOrder && how != noChanges {
			f.log.Info("follow: revision applied "+how, "revision", evRev)
		}
		if err := f.retryPending(ctx, tx); err != nil {
			return err
		}
		evs = evs[n:]
	}
	rev := resp.Revision
	if k := len(resp.Events); k > 0 {
		rev = max(rev, resp.Events[k-1].Revision)
	}
	cp := f.checkpointFor(rev)
	if err := saveCheckpoint(ctx, tx, f.cfg.Prefix, f.cfg.StoreName, cp); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit revision %d: %w", rev, err)
	}
	f.revision.Store(cp)
	f.npending.Store(int64(len(f.pending)))
	f.log.Debug("follow: applied", "revision", rev, "events", len(resp.Events), "checkpoint", cp)
	return nil
}
