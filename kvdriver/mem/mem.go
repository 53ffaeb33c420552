package mem

import (
	"context"
	"fmt"
	"sync"

	"github.com/bagger/lenkwerk/kvdriver"
)

var _ kvdriver.Store = (*Store)(nil)

// Store is a connection to an in-process store. It is safe for concurrent
// use.
type Store struct {
	db     *db
	limits kvdriver.Limits

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close, ends the watches
	wg     sync.WaitGroup
}

// Open opens the store cfg describes: a fresh private one, or the shared
// store cfg.Name (created by the first Open of that name).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mem: open: %w", err)
	}
	full, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var d *db
	if cfg.Name == "" {
		d = newDB(full)
	} else if d, err = namedDB(cfg.Name, cfg, full); err != nil {
		return nil, err
	}
	return &Store{db: d, limits: d.cfg.Limits, done: make(chan struct{})}, nil
}

// check returns the error a call must fail with before doing anything.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.done:
		return kvdriver.ErrClosed
	default:
		return nil
	}
}

// Get implements kvdriver.Store.
func (s *Store) Get(ctx context.Context, key string) (kvdriver.KV, error) {
	if err := s.check(ctx); err != nil {
		return kvdriver.KV{}, fmt.Errorf("mem: get %q: %w", key, err)
	}
	if err := kvdriver.ValidateKey(key); err != nil {
		return kvdriver.KV{}, fmt.Errorf("mem: get: %w", err)
	}
	kv, ok := s.db.get(key)
	if !ok {
		return kvdriver.KV{}, fmt.Errorf("mem: get %q: %w", key, kvdriver.ErrNotFound)
	}
	return kv, nil
}

// Put implements kvdriver.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("mem: put %q: %w", key, err)
	}
	if err := kvdriver.ValidatePut(key, value, s.limits); err != nil {
		return 0, fmt.Errorf("mem: put: %w", err)
	}
	return s.db.commit([]kvdriver.Op{kvdriver.Put(key, value)})
}

// Delete implements kvdriver.Store.
func (s *Store) Delete(ctx context.Context, key string) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("mem: delete %q: %w", key, err)
	}
	if err := kvdriver.ValidateKey(key); err != nil {
		return 0, fmt.Errorf("mem: delete: %w", err)
	}
	return s.db.commit([]kvdriver.Op{kvdriver.Delete(key)})
}

// List implements kvdriver.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	if err := s.check(ctx); err != nil {
		return nil, 0, fmt.Errorf("mem: list %q: %w", prefix, err)
	}
	prefix, err := kvdriver.CleanPrefix(prefix)
	if err != nil {
		return nil, 0, fmt.Errorf("mem: list: %w", err)
	}
	kvs, rev := s.db.list(prefix)
	return kvs, rev, nil
}

// Apply implements kvdriver.Store.
func (s *Store) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("mem: apply: %w", err)
	}
	if err := kvdriver.ValidateBatch(ops, s.limits); err != nil {
		return 0, fmt.Errorf("mem: apply: %w", err)
	}
	rev, err := s.db.commit(ops)
	if err != nil {
		return 0, fmt.Errorf("mem: apply: %w", err)
	}
	return rev, nil
}

// Compact implements kvdriver.Store.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("mem: compact: %w", err)
	}
	return s.db.compact(rev)
}

// Limits implements kvdriver.Store.
func (s *Store) Limits() kvdriver.Limits { return s.limits }

// Close implements kvdriver.Store: it ends the store's watches and waits
// for their goroutines. A named store's data stays for the next Open.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
