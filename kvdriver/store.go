package kvdriver

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
)

// Store is a connection to a key-value store, the same for every driver.
// It is safe for concurrent use.
//
// Keys must satisfy ValidateKey and values must be valid JSON; otherwise
// nothing is written and the error wraps ErrInvalidKey or ErrInvalidValue
// and names the problem. Every error names the driver and the operation
// ("etcd: get \"/a\": …"); Code and Retryable classify it.
type Store struct {
	name   string
	d      Driver
	putter Putter // d's single-key writes, or nil: one-operation Apply
	limits Limits

	// ctx is cancelled by Close and ends the watches.
	ctx    context.Context
	cancel context.CancelFunc
	// mu orders watches.Add before Close's watches.Wait: once closed is
	// set under mu, no watch starts.
	mu      sync.Mutex
	closed  atomic.Bool
	watches sync.WaitGroup
}

// NewStore returns the Store of an open driver; name ("etcd", "pgkv") is
// the prefix of its errors. Drivers call it from their Open; Open (by URL)
// is the way for everyone else. The Store owns d: its Close closes d.
func NewStore(name string, d Driver) *Store {
	s := &Store{name: name, d: d, limits: d.Limits()}
	s.putter, _ = d.(Putter)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// check returns the error a call must fail with before the driver sees
// it: the store is closed, or ctx is done.
func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// wrap names the driver and the operation in err and classifies it: by the
// package's sentinels, else by the driver's ErrorCode; a failure of a
// store being closed is ErrClosed. The classified error wraps the code's
// sentinel, whichever driver it came from.
func (s *Store) wrap(op string, err error) error {
	code := sentinelCode(err)
	if code == Unknown {
		if code = s.d.ErrorCode(err); code == OK {
			code = Unknown
		}
	}
	if s.closed.Load() && (code == Unknown || code == Unavailable || code == Canceled) {
		code = Closed
	}
	if sentinel := codeSentinels[code]; sentinel != nil && sentinelCode(err) != code {
		err = fmt.Errorf("%w: %w", sentinel, err)
	}
	return &storeError{code: code, err: fmt.Errorf("%s: %s: %w", s.name, op, err)}
}

// Get returns the key's value, or an error wrapping ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (KV, error) {
	if err := s.check(ctx); err != nil {
		return KV{}, s.wrap(fmt.Sprintf("get %q", key), err)
	}
	if err := ValidateKey(key); err != nil {
		return KV{}, s.wrap("get", err)
	}
	kv, err := s.d.Get(ctx, key)
	if err != nil {
		return KV{}, s.wrap(fmt.Sprintf("get %q", key), err)
	}
	return kv, nil
}

// Put sets key to value and returns the new store revision.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, s.wrap(fmt.Sprintf("put %q", key), err)
	}
	if err := ValidatePut(key, value, s.limits); err != nil {
		return 0, s.wrap("put", err)
	}
	var (
		rev int64
		err error
	)
	if s.putter != nil {
		rev, err = s.putter.Put(ctx, key, value)
	} else {
		rev, err = s.d.Apply(ctx, []Op{Put(key, value)})
	}
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("put %q", key), err)
	}
	return rev, nil
}

// Delete removes key and returns the store revision after it. Deleting an
// absent key succeeds and creates no revision.
func (s *Store) Delete(ctx context.Context, key string) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, s.wrap(fmt.Sprintf("delete %q", key), err)
	}
	if err := ValidateKey(key); err != nil {
		return 0, s.wrap("delete", err)
	}
	var (
		rev int64
		err error
	)
	if s.putter != nil {
		rev, err = s.putter.Delete(ctx, key)
	} else {
		rev, err = s.d.Apply(ctx, []Op{Delete(key)})
	}
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("delete %q", key), err)
	}
	return rev, nil
}

// List returns every key at or below prefix, sorted by key, and the store
// revision the listing reflects. Watching from that revision continues
// exactly where the listing ends. The revision is at least 1, even for an
// empty store (as in etcd), since Watch takes 0 for "now".
func (s *Store) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	if err := s.check(ctx); err != nil {
		return nil, 0, s.wrap(fmt.Sprintf("list %q", prefix), err)
	}
	clean, err := CleanPrefix(prefix)
	if err != nil {
		return nil, 0, s.wrap("list", err)
	}
	kvs, rev, err := s.d.List(ctx, clean)
	if err != nil {
		return nil, 0, s.wrap(fmt.Sprintf("list %q", clean), err)
	}
	return kvs, rev, nil
}

// Apply applies ops atomically: all or none, as one revision, seen by
// watchers as one response. A batch may name each key once (otherwise
// ErrInvalidBatch), except that a key may have one Require besides its put
// or delete, and must fit Limits (otherwise ErrTooLarge; a Require counts
// as an operation and its key as bytes). It returns the store revision
// after the batch.
//
// Every Require is checked atomically with the writes: if a required key's
// ModRevision differs from the Require's (0: the key must be absent),
// nothing is written, no event is produced and the error wraps
// ErrConflict. A Require itself produces no event and no revision.
func (s *Store) Apply(ctx context.Context, ops []Op) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, s.wrap(applyOp(ops), err)
	}
	if err := ValidateBatch(ops, s.limits); err != nil {
		return 0, s.wrap("apply", err)
	}
	rev, err := s.d.Apply(ctx, ops)
	if err != nil {
		return 0, s.wrap(applyOp(ops), err)
	}
	return rev, nil
}

func applyOp(ops []Op) string { return fmt.Sprintf("apply %d operations", len(ops)) }

// Watch reports every change at or below prefix with a revision greater
// than afterRev, in revision order, exactly once; afterRev 0 means "from
// the current revision": every change committed after Watch returns is
// reported. The watch survives server restarts and connection loss,
// resuming after the last revision it delivered. The channel is closed
// when ctx is done (maybe after a response whose Err wraps ctx's error) or
// after a response with Err set: wrapping ErrCompacted when history after
// afterRev is gone, ErrInvalidKey for a bad prefix, ErrClosed when the
// store is closed.
func (s *Store) Watch(ctx context.Context, prefix string, afterRev int64) <-chan WatchResponse {
	out := make(chan WatchResponse, 1)
	op := fmt.Sprintf("watch %q", prefix)
	fail := func(err error) <-chan WatchResponse {
		out <- WatchResponse{Err: err}
		close(out)
		return out
	}
	clean, err := CleanPrefix(prefix)
	if err != nil {
		return fail(s.wrap("watch", err))
	}
	if afterRev < 0 {
		return fail(&storeError{code: InvalidArgument, err: fmt.Errorf("%s: %s: negative revision %d", s.name, op, afterRev)})
	}
	if ctx.Err() != nil {
		close(out)
		return out
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fail(s.wrap(op, ErrClosed))
	}
	s.watches.Add(1)
	s.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	in := s.d.Watch(wctx, clean, afterRev)
	go func() {
		defer s.watches.Done()
		defer close(out)
		defer cancel()
		defer stop()
		for r := range in {
			if r.Err != nil {
				r.Err = s.wrap(op, r.Err)
			}
			select {
			case out <- r:
			case <-wctx.Done():
				// The driver closes in once it sees wctx end.
				for range in {
				}
				return
			}
		}
	}()
	return out
}

// Compact discards history at and before rev; watches from older
// revisions then fail with ErrCompacted.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	op := fmt.Sprintf("compact %d", rev)
	if err := s.check(ctx); err != nil {
		return s.wrap(op, err)
	}
	if err := s.d.Compact(ctx, rev); err != nil {
		return s.wrap(op, err)
	}
	return nil
}

// Limits reports the driver's size limits.
func (s *Store) Limits() Limits { return s.limits }

// Close releases the store's resources and ends its watches. It is
// idempotent; every other call fails with ErrClosed afterwards (Limits
// still answers).
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed.Swap(true) {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	s.cancel()
	err := s.d.Close()
	s.watches.Wait()
	if err != nil {
		return &storeError{code: Unknown, err: fmt.Errorf("%s: close: %w", s.name, err)}
	}
	return nil
}

// As sets *target to the store's driver if target points to a variable of
// a type the driver has (its own, or an interface it implements), and
// reports whether it did: the way to a driver's own features
// (pgkv.Driver.NotifyErr, etcd.Driver.Client) from a Store.
func (s *Store) As(target any) bool {
	v := reflect.ValueOf(target)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return false
	}
	d := reflect.ValueOf(s.d)
	if !d.Type().AssignableTo(v.Elem().Type()) {
		return false
	}
	v.Elem().Set(d)
	return true
}
