package mem

import (
	"context"
	"fmt"
	"sync"

	"github.com/bagger/lenkwerk/kvdriver"
)

var _ kvdriver.Driver = (*Driver)(nil)

// Driver is the kvdriver.Driver of an in-process store; Open returns it
// inside a kvdriver.Store.
type Driver struct {
	db     *db
	limits kvdriver.Limits

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close, ends the watches
	wg     sync.WaitGroup
}

// Open opens the store cfg describes: a fresh private one, or the shared
// store cfg.Name (created by the first Open of that name). It is what
// kvdriver.Open does for a mem:// URL, from the Config the URL parses into.
func Open(ctx context.Context, cfg Config) (*kvdriver.Store, error) {
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
	return kvdriver.NewStore(Scheme, &Driver{db: d, limits: d.cfg.Limits, done: make(chan struct{})}), nil
}

// Get implements kvdriver.Driver.
func (s *Driver) Get(_ context.Context, key string) (kvdriver.KV, error) {
	kv, ok := s.db.get(key)
	if !ok {
		return kvdriver.KV{}, kvdriver.ErrNotFound
	}
	return kv, nil
}

// List implements kvdriver.Driver.
func (s *Driver) List(_ context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	kvs, rev := s.db.list(prefix)
	return kvs, rev, nil
}

// Apply implements kvdriver.Driver.
func (s *Driver) Apply(_ context.Context, ops []kvdriver.Op) (int64, error) {
	return s.db.commit(ops)
}

// Compact implements kvdriver.Driver.
func (s *Driver) Compact(_ context.Context, rev int64) error {
	return s.db.compact(rev)
}

// Limits implements kvdriver.Driver.
func (s *Driver) Limits() kvdriver.Limits { return s.limits }

// ErrorCode implements kvdriver.Driver: every error of mem wraps a
// sentinel or says what is wrong with the call.
func (s *Driver) ErrorCode(error) kvdriver.ErrorCode { return kvdriver.Unknown }

// Close implements kvdriver.Driver: it ends the store's watches and waits
// for their goroutines. A named store's data stays for the next Open.
func (s *Driver) Close() error {
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
