package pgkv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bagger/lenkwerk/kvdriver"
)

var _ kvdriver.Driver = (*Driver)(nil)

func init() {
	opener := kvdriver.OpenerFunc(func(ctx context.Context, u *url.URL) (*kvdriver.Store, error) {
		c, err := ParseURL(u.String())
		if err != nil {
			return nil, err
		}
		return Open(ctx, c)
	})
	kvdriver.Register("postgres", opener)
	kvdriver.Register("postgresql", opener)
}

// Driver is the kvdriver.Driver of a PostgreSQL database; Open returns it
// inside a kvdriver.Store.
type Driver struct {
	cfg Config
	// pool is the one connection a store that only reads and watches
	// holds; wpool opens connections on the first write.
	pool  *sharedPool
	wpool *pgxpool.Pool
	q     queries

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	// mu orders goroutine starts (wg.Add) before Close's wg.Wait: once
	// closed is set under mu, nothing starts.
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed atomic.Bool

	listener *listener

	writes     chan *writeReq
	writerDone chan struct{} // closed when writeLoop has ended

	// syncToken is kv_meta.sync_token; durable the highest revision known
	// to be durable (see durable.go).
	syncToken string
	durable   atomic.Int64
}

// Open connects to the database, applies the migrations (unless
// c.Migrate is false, in which case the schema must already be at
// SchemaVersion) and starts the automatic compaction. It is what
// kvdriver.Open does for a postgres:// URL, from the Config the URL parses
// into (ParseURL, or DefaultConfig for a libpq connection string): the one
// other way to open a pgkv store.
func Open(ctx context.Context, c Config) (*kvdriver.Store, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", kvdriver.ErrInvalidURL, err)
	}
	pc, err := pgxpool.ParseConfig(c.ConnString)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", kvdriver.ErrInvalidURL, err)
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = defaultApplicationName
	}
	if c.Migrate {
		if err := Migrate(ctx, c); err != nil {
			return nil, err
		}
	}
	s := &Driver{cfg: c, q: newQueries(c.Schema)}
	s.listener = newListener(s, pc.ConnConfig.RuntimeParams["application_name"])
	rc := pc.Copy()
	rc.MaxConns, rc.MinConns = 1, 0
	rc.ConnConfig.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { s.listener.notified(n) }
	rpool, err := pgxpool.NewWithConfig(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("pgkv: connect: %w", err)
	}
	s.pool = &sharedPool{pool: rpool, l: s.listener}
	// No connection until the first write.
	if s.wpool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		rpool.Close()
		return nil, fmt.Errorf("pgkv: connect: %w", err)
	}
	if err := s.checkSchema(ctx); err != nil {
		rpool.Close()
		s.wpool.Close()
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.writes, s.writerDone = make(chan *writeReq, maxGroupBatches), make(chan struct{})
	s.wg.Add(1)
	go s.writeLoop()
	if c.CompactInterval > 0 && (c.HistoryRevisions > 0 || c.HistoryAge > 0) {
		s.wg.Add(1)
		go s.autoCompact()
	}
	return kvdriver.NewStore(driverName, s), nil
}

// driverName prefixes the store's errors.
const driverName = "pgkv"

// checkSchema verifies the tables are there and at this driver's version.
func (s *Driver) checkSchema(ctx context.Context) error {
	var version int64
	var dirty bool
	err := s.pool.QueryRow(ctx, `SELECT version, dirty FROM `+pgx.Identifier{s.cfg.Schema, migrationsTable}.Sanitize()).Scan(&version, &dirty)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable, errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("pgkv: schema %q has no pgkv tables: open with migrate=true once, or as a role that may create them", s.cfg.Schema)
	case err != nil:
		return fmt.Errorf("pgkv: read schema version: %w", translate(err, s.cfg.Schema))
	case dirty || uint(version) != SchemaVersion:
		return fmt.Errorf("pgkv: schema %q is at version %d (dirty %t), this driver needs %d: open with migrate=true", s.cfg.Schema, version, dirty, SchemaVersion)
	}
	if err := s.pool.QueryRow(ctx, `SELECT sync_token FROM `+pgx.Identifier{s.cfg.Schema, "kv_meta"}.Sanitize()).Scan(&s.syncToken); err != nil {
		return fmt.Errorf("pgkv: read kv_meta: %w", translate(err, s.cfg.Schema))
	}
	return nil
}

// Config returns the configuration the store was opened with.
func (s *Driver) Config() Config { return s.cfg }

// Limits reports the store's size limits.
func (s *Driver) Limits() kvdriver.Limits { return s.cfg.Limits }

// Get implements kvdriver.Driver.
func (s *Driver) Get(ctx context.Context, key string) (kvdriver.KV, error) {
	var (
		head    int64
		lsn     *string
		flushed bool
		value   []byte
		mod     *int64
	)
	err := s.read(ctx, func() error {
		return s.pool.QueryRow(ctx, s.q.get, key).Scan(&head, &lsn, &flushed, &value, &mod)
	})
	if err != nil {
		return kvdriver.KV{}, s.translate(err)
	}
	if err := s.awaitDurable(ctx, head, lsn, flushed); err != nil {
		return kvdriver.KV{}, err
	}
	if mod == nil {
		return kvdriver.KV{}, kvdriver.ErrNotFound
	}
	return kvdriver.KV{Key: key, Value: value, ModRevision: *mod}, nil
}

// List implements kvdriver.Driver: keys sorted in byte order, and the
// revision, from one snapshot.
func (s *Driver) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	var (
		kvs []kvdriver.KV
		rev int64
	)
	err := s.read(ctx, func() (err error) {
		kvs, rev, err = s.list(ctx, prefix)
		return err
	})
	if err != nil {
		return nil, 0, s.translate(err)
	}
	return kvs, rev, nil
}

// list is one attempt of List.
func (s *Driver) list(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	eq, lo, hi := prefixRange(prefix)
	rows, err := s.pool.Query(ctx, s.q.list, eq, lo, hi)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var (
		kvs     []kvdriver.KV
		rev     int64
		lsn     *string
		flushed bool
	)
	for rows.Next() {
		var (
			key   *string
			value []byte
			mod   *int64
		)
		if err := rows.Scan(&rev, &lsn, &flushed, &key, &value, &mod); err != nil {
			return nil, 0, err
		}
		if key != nil {
			kvs = append(kvs, kvdriver.KV{Key: *key, Value: value, ModRevision: *mod})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	if err := s.awaitDurable(ctx, rev, lsn, flushed); err != nil {
		return nil, 0, err
	}
	return kvs, rev, nil
}

// read runs an idempotent read, and once more when its connection turned
// out to be dead: after a server restart (or pg_terminate_backend) every
// idle connection in the pool is, and the first use of each fails. Reset
// drops the pool's other dead connections with it. Writes are not retried
// this way: a commit whose reply was lost may have happened.
func (s *Driver) read(ctx context.Context, f func() error) error {
	err := f()
	if err == nil || ctx.Err() != nil || !deadConn(err) {
		return err
	}
	s.pool.pool.Reset()
	return f()
}

// deadConn reports an error of a connection the server had already ended
// (admin or crash shutdown, terminated backend) or that failed before
// anything was sent.
func deadConn(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == pgerrcode.AdminShutdown || pgErr.Code == pgerrcode.CrashShutdown
	}
	return pgconn.SafeToRetry(err)
}

// Apply implements kvdriver.Driver: one revision, one kv_apply in a
// PostgreSQL transaction.
func (s *Driver) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	keys := make([]string, 0, len(ops))
	values := make([][]byte, 0, len(ops))
	reqKeys := []string{}
	reqRevs := []int64{}
	for _, op := range ops {
		switch op.Type {
		case kvdriver.OpRequire:
			reqKeys = append(reqKeys, op.Key)
			reqRevs = append(reqRevs, op.ModRevision)
		case kvdriver.OpPut:
			keys = append(keys, op.Key)
			values = append(values, op.Value)
		default:
			keys = append(keys, op.Key)
			values = append(values, nil)
		}
	}
	return s.apply(ctx, keys, values, reqKeys, reqRevs)
}

// Close implements kvdriver.Driver: it ends the store's watches and
// background work and closes its connections.
func (s *Driver) Close() error {
	s.mu.Lock()
	already := s.closed.Swap(true)
	s.mu.Unlock()
	if already {
		return nil
	}
	s.cancel()
	s.wg.Wait()
	s.pool.pool.Close()
	s.wpool.Close()
	return nil
}

// prefixRange turns a key prefix into "key = eq OR lo <= key < hi" in byte
// order: '0' is the byte after '/'.
func prefixRange(prefix string) (eq, lo, hi string) {
	if prefix == "/" {
		return "/", "/", "0"
	}
	return prefix, prefix + "/", prefix + "0"
}

// ErrorCode implements kvdriver.Driver: missing privileges are
// PermissionDenied, the rest of SQLSTATE class 42 (no such table or
// function: the schema is not this driver's) and a read-only server are
// FailedPrecondition, a connection the server ended is Unavailable.
func (s *Driver) ErrorCode(err error) kvdriver.ErrorCode {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == pgerrcode.InsufficientPrivilege:
			return kvdriver.PermissionDenied
		case pgerrcode.IsSyntaxErrororAccessRuleViolation(pgErr.Code), pgErr.Code == pgerrcode.ReadOnlySQLTransaction:
			return kvdriver.FailedPrecondition
		case pgErr.Code == conflictCode:
			return kvdriver.Conflict
		}
	}
	if deadConn(err) {
		return kvdriver.Unavailable
	}
	return kvdriver.Unknown
}

func (s *Driver) translate(err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%w (%v)", kvdriver.ErrClosed, err)
	}
	return translate(err, s.cfg.Schema)
}

// translate gives PostgreSQL errors that have a meaning for store users a
// message that says so.
func translate(err error, schema string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
		return fmt.Errorf("permission denied in schema %q: the role lacks the privilege for this (%s is read-only: Get, List and Watch): %w", schema, readerRole, err)
	}
	return err
}
