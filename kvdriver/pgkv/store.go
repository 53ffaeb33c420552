package pgkv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bagger/lenkwerk/kvdriver"
)

var _ kvdriver.Store = (*Store)(nil)

func init() {
	opener := kvdriver.OpenerFunc(func(ctx context.Context, u *url.URL) (kvdriver.Store, error) {
		c, err := ParseURL(u.String())
		if err != nil {
			return nil, err
		}
		return Open(ctx, c)
	})
	kvdriver.Register("postgres", opener)
	kvdriver.Register("postgresql", opener)
}

// Store is a kvdriver.Store on a PostgreSQL database.
type Store struct {
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
}

// Open connects to the database, applies the migrations (unless
// c.Migrate is false, in which case the schema must already be at
// SchemaVersion) and starts the automatic compaction.
func Open(ctx context.Context, c Config) (*Store, error) {
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
	s := &Store{cfg: c, q: newQueries(c.Schema)}
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
	return s, nil
}

// checkSchema verifies the tables are there and at this driver's version.
func (s *Store) checkSchema(ctx context.Context) error {
	var version int64
	var dirty bool
	err := s.pool.QueryRow(ctx, `SELECT version, dirty FROM `+pgx.Identifier{s.cfg.Schema, migrationsTable}.Sanitize()).Scan(&version, &dirty)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42P01", errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("pgkv: schema %q has no pgkv tables: open with migrate=true once, or as a role that may create them", s.cfg.Schema)
	case err != nil:
		return fmt.Errorf("pgkv: read schema version: %w", translate(err, s.cfg.Schema))
	case dirty || uint(version) != SchemaVersion:
		return fmt.Errorf("pgkv: schema %q is at version %d (dirty %t), this driver needs %d: open with migrate=true", s.cfg.Schema, version, dirty, SchemaVersion)
	}
	return nil
}

// Config returns the configuration the store was opened with.
func (s *Store) Config() Config { return s.cfg }

// Limits reports the store's size limits.
func (s *Store) Limits() kvdriver.Limits { return s.cfg.Limits }

// Get returns the key's value, or an error wrapping kvdriver.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (kvdriver.KV, error) {
	if err := kvdriver.ValidateKey(key); err != nil {
		return kvdriver.KV{}, err
	}
	if s.closed.Load() {
		return kvdriver.KV{}, kvdriver.ErrClosed
	}
	kv := kvdriver.KV{Key: key}
	err := s.read(ctx, func() error {
		return s.pool.QueryRow(ctx, s.q.get, key).Scan(&kv.Value, &kv.ModRevision)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return kvdriver.KV{}, fmt.Errorf("get %q: %w", key, kvdriver.ErrNotFound)
	}
	if err != nil {
		return kvdriver.KV{}, fmt.Errorf("pgkv: get %q: %w", key, s.translate(err))
	}
	return kv, nil
}

// List returns every key at or below prefix, sorted by key (byte order), and
// the revision the listing reflects; both come from one snapshot.
func (s *Store) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	prefix, err := kvdriver.CleanPrefix(prefix)
	if err != nil {
		return nil, 0, err
	}
	if s.closed.Load() {
		return nil, 0, kvdriver.ErrClosed
	}
	var (
		kvs []kvdriver.KV
		rev int64
	)
	err = s.read(ctx, func() (err error) {
		kvs, rev, err = s.list(ctx, prefix)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("pgkv: list %q: %w", prefix, s.translate(err))
	}
	return kvs, rev, nil
}

// list is one attempt of List.
func (s *Store) list(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	eq, lo, hi := prefixRange(prefix)
	rows, err := s.pool.Query(ctx, s.q.list, eq, lo, hi)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var (
		kvs []kvdriver.KV
		rev int64
	)
	for rows.Next() {
		var (
			key   *string
			value []byte
			mod   *int64
		)
		if err := rows.Scan(&rev, &key, &value, &mod); err != nil {
			return nil, 0, err
		}
		if key != nil {
			kvs = append(kvs, kvdriver.KV{Key: *key, Value: value, ModRevision: *mod})
		}
	}
	return kvs, rev, rows.Err()
}

// read runs an idempotent read, and once more when its connection turned
// out to be dead: after a server restart (or pg_terminate_backend) every
// idle connection in the pool is, and the first use of each fails. Reset
// drops the pool's other dead connections with it. Writes are not retried
// this way: a commit whose reply was lost may have happened.
func (s *Store) read(ctx context.Context, f func() error) error {
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
		return pgErr.Code == "57P01" || pgErr.Code == "57P02"
	}
	return pgconn.SafeToRetry(err)
}

// Put sets key to value and returns the new revision.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := kvdriver.ValidatePut(key, value, s.cfg.Limits); err != nil {
		return 0, err
	}
	rev, err := s.apply(ctx, []string{key}, [][]byte{value}, nil, nil)
	if err != nil {
		return 0, fmt.Errorf("pgkv: put %q: %w", key, err)
	}
	return rev, nil
}

// Delete removes key and returns the revision after it; deleting an absent
// key creates no revision.
func (s *Store) Delete(ctx context.Context, key string) (int64, error) {
	if err := kvdriver.ValidateKey(key); err != nil {
		return 0, err
	}
	rev, err := s.apply(ctx, []string{key}, [][]byte{nil}, nil, nil)
	if err != nil {
		return 0, fmt.Errorf("pgkv: delete %q: %w", key, err)
	}
	return rev, nil
}

// Apply applies ops atomically as one revision (one PostgreSQL
// transaction).
func (s *Store) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	if err := kvdriver.ValidateBatch(ops, s.cfg.Limits); err != nil {
		return 0, err
	}
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
	rev, err := s.apply(ctx, keys, values, reqKeys, reqRevs)
	if err != nil {
		return 0, fmt.Errorf("pgkv: apply %d operations: %w", len(ops), err)
	}
	return rev, nil
}

// Close ends the store's watches and background work and closes its
// connections. It is idempotent.
func (s *Store) Close() error {
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

func (s *Store) translate(err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%w (%v)", kvdriver.ErrClosed, err)
	}
	return translate(err, s.cfg.Schema)
}

// translate gives PostgreSQL errors that have a meaning for store users a
// message that says so.
func translate(err error, schema string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fmt.Errorf("permission denied in schema %q: the role lacks the privilege for this (%s is read-only: Get, List and Watch): %w", schema, readerRole, err)
	}
	return err
}
