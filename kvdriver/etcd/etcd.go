package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bagger/lenkwerk/kvdriver"
)

func init() {
	kvdriver.Register(Scheme, kvdriver.OpenerFunc(func(ctx context.Context, u *url.URL) (kvdriver.Store, error) {
		cfg, err := ConfigFromURL(u)
		if err != nil {
			return nil, err
		}
		return Open(ctx, cfg)
	}))
}

// etcd's default server limits (--max-txn-ops, --max-request-bytes).
const (
	serverMaxTxnOps       = 128
	serverMaxRequestBytes = 1536 * 1024
	// requestOverhead is room for what etcd counts in a request besides
	// key and value bytes: the raft request header (ID, auth user name and
	// revision) and, per operation, protobuf tags and lengths (at most
	// ~16 bytes each, ~2 KiB for 128). 8 KiB leaves ~5 KiB for the header.
	requestOverhead = 8 * 1024
)

// limits keeps every accepted batch under etcd's default server limits.
var limits = kvdriver.Limits{
	MaxKeyBytes:   kvdriver.DefaultMaxKeyBytes,
	MaxValueBytes: serverMaxRequestBytes - requestOverhead - kvdriver.DefaultMaxKeyBytes,
	MaxBatchOps:   serverMaxTxnOps,
	MaxBatchBytes: serverMaxRequestBytes - requestOverhead,
}

// Store is a kvdriver.Store on an etcd cluster.
type Store struct {
	client *clientv3.Client
	// shared is the client's entry in the process-wide pool (see pool.go).
	shared *sharedClient
	cfg    Config

	// ctx is cancelled by Close and ends every watch.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	watches sync.WaitGroup

	// watchRestarts counts etcd watches re-established after their stream
	// ended, for tests.
	watchRestarts atomic.Int64
}

var _ kvdriver.Store = (*Store)(nil)

// Open connects to the etcd cluster of cfg and checks that a member
// answers (and, with a username, that the credentials are accepted) within
// cfg.DialTimeout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg, err)
	}
	if cfg.PasswordFile != "" {
		if cfg.Password, err = readPasswordFile(cfg.PasswordFile); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg, err)
		}
	}
	if cfg.Username != "" && cfg.Password == "" {
		return nil, fmt.Errorf("%w: etcd user %q has no password (password-file= or $%s)", kvdriver.ErrInvalidURL, cfg.Username, PasswordEnv)
	}
	shared, err := acquire(ctx, cfg, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("%s: connect: %w%s", cfg, err, handshakeReason(ctx, cfg, tlsCfg))
	}
	// A Store sharing a client still checks the cluster answers now, as
	// Open promises.
	if err := ping(ctx, shared.client, cfg); err != nil {
		shared.release()
		return nil, fmt.Errorf("%s: %w%s", cfg, err, handshakeReason(ctx, cfg, tlsCfg))
	}
	s := &Store{client: shared.client, shared: shared, cfg: cfg}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// ping asks every endpoint for its status at once and succeeds when one
// answers, so a single dead member does not delay Open.
func ping(ctx context.Context, c *clientv3.Client, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	errc := make(chan error, len(cfg.Endpoints))
	for _, ep := range cfg.Endpoints {
		go func() {
			_, err := c.Status(ctx, ep)
			if err != nil {
				err = fmt.Errorf("%s: %w", ep, err)
			}
			errc <- err
		}()
	}
	var errs []error
	for range cfg.Endpoints {
		err := <-errc
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("no etcd member answered within %v: %w", cfg.DialTimeout, errors.Join(errs...))
}

// Client returns the underlying etcd client, for tools that need etcd
// features the Store does not offer. Other Stores of the process opened
// with the same endpoints and credentials share it: do not close it.
func (s *Store) Client() *clientv3.Client { return s.client }

// request bounds a unary call by the request timeout.
func (s *Store) request(ctx context.Context) (context.Context, context.CancelFunc, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, nil, kvdriver.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	return ctx, cancel, nil
}

// wrap adds the operation to err and translates etcd's errors into the
// kvdriver sentinels.
func (s *Store) wrap(op string, err error) error {
	var sentinel error
	switch {
	case errors.Is(err, rpctypes.ErrRequestTooLarge), errors.Is(err, rpctypes.ErrTooManyOps):
		sentinel = kvdriver.ErrTooLarge
	case errors.Is(err, rpctypes.ErrDuplicateKey):
		sentinel = kvdriver.ErrInvalidBatch
	case errors.Is(err, rpctypes.ErrCompacted):
		sentinel = kvdriver.ErrCompacted
	case status.Code(err) == codes.ResourceExhausted:
		// gRPC refused the message size before etcd saw it.
		sentinel = kvdriver.ErrTooLarge
	case s.isClosed():
		sentinel = kvdriver.ErrClosed
	}
	if sentinel != nil {
		return fmt.Errorf("etcd %s: %w: %w", op, sentinel, err)
	}
	return fmt.Errorf("etcd %s: %w", op, err)
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Get returns the key's value, or an error wrapping kvdriver.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (kvdriver.KV, error) {
	if err := kvdriver.ValidateKey(key); err != nil {
		return kvdriver.KV{}, fmt.Errorf("etcd get: %w", err)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return kvdriver.KV{}, fmt.Errorf("etcd get %q: %w", key, err)
	}
	defer cancel()
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return kvdriver.KV{}, s.wrap(fmt.Sprintf("get %q", key), err)
	}
	if len(resp.Kvs) == 0 {
		return kvdriver.KV{}, fmt.Errorf("etcd get %q: %w", key, kvdriver.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return kvdriver.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}, nil
}

// Put sets key to value and returns the new revision.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := kvdriver.ValidatePut(key, value, limits); err != nil {
		return 0, fmt.Errorf("etcd put: %w", err)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return 0, fmt.Errorf("etcd put %q: %w", key, err)
	}
	defer cancel()
	resp, err := s.client.Put(ctx, key, string(value))
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("put %q", key), err)
	}
	return resp.Header.Revision, nil
}

// Delete removes key and returns the revision after it: the delete's own
// revision, or the current one when the key was absent.
func (s *Store) Delete(ctx context.Context, key string) (int64, error) {
	if err := kvdriver.ValidateKey(key); err != nil {
		return 0, fmt.Errorf("etcd delete: %w", err)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return 0, fmt.Errorf("etcd delete %q: %w", key, err)
	}
	defer cancel()
	resp, err := s.client.Delete(ctx, key)
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("delete %q", key), err)
	}
	return resp.Header.Revision, nil
}

// List returns the keys at or below prefix, sorted, and the revision the
// listing reflects. The key itself and its subtree are read in one
// read-only transaction, so both come from the same revision.
func (s *Store) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	prefix, err := kvdriver.CleanPrefix(prefix)
	if err != nil {
		return nil, 0, fmt.Errorf("etcd list: %w", err)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("etcd list %q: %w", prefix, err)
	}
	defer cancel()
	var ops []clientv3.Op
	if prefix == "/" {
		ops = []clientv3.Op{clientv3.OpGet("/", clientv3.WithPrefix())}
	} else {
		ops = []clientv3.Op{clientv3.OpGet(prefix), clientv3.OpGet(prefix+"/", clientv3.WithPrefix())}
	}
	resp, err := s.client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, 0, s.wrap(fmt.Sprintf("list %q", prefix), err)
	}
	var kvs []kvdriver.KV
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			kvs = append(kvs, kvdriver.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
		}
	}
	return kvs, resp.Header.Revision, nil
}

// Apply writes ops as one etcd transaction and returns the revision after
// it. Deletes of absent keys make no event; a batch that changes nothing
// makes no revision.
func (s *Store) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	if err := kvdriver.ValidateBatch(ops, limits); err != nil {
		return 0, fmt.Errorf("etcd apply: %w", err)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return 0, fmt.Errorf("etcd apply: %w", err)
	}
	defer cancel()
	txn := make([]clientv3.Op, 0, len(ops))
	var cmps []clientv3.Cmp
	for _, op := range ops {
		switch op.Type {
		case kvdriver.OpPut:
			txn = append(txn, clientv3.OpPut(op.Key, string(op.Value)))
		case kvdriver.OpDelete:
			txn = append(txn, clientv3.OpDelete(op.Key))
		case kvdriver.OpRequire:
			// An absent key's ModRevision compares as 0 in etcd.
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(op.Key), "=", op.ModRevision))
		}
	}
	resp, err := s.client.Txn(ctx).If(cmps...).Then(txn...).Commit()
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("apply %d operations", len(ops)), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("etcd apply: %w (revision %d)", kvdriver.ErrConflict, resp.Header.Revision)
	}
	return resp.Header.Revision, nil
}

// Compact discards history at and before rev. Compacting a revision that
// is already compacted succeeds.
//
// etcd's own compaction at r keeps the events of r and discards older
// ones, so the store compacts at rev+1; when rev is the current revision
// (rev+1 is in the future for etcd) it compacts at rev, which keeps the
// events of rev itself.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if rev <= 0 {
		return fmt.Errorf("etcd compact: revision %d is not positive", rev)
	}
	ctx, cancel, err := s.request(ctx)
	if err != nil {
		return fmt.Errorf("etcd compact %d: %w", rev, err)
	}
	defer cancel()
	_, err = s.client.Compact(ctx, rev+1)
	if errors.Is(err, rpctypes.ErrFutureRev) {
		_, err = s.client.Compact(ctx, rev)
	}
	switch {
	case err == nil, errors.Is(err, rpctypes.ErrCompacted):
		return nil
	case errors.Is(err, rpctypes.ErrFutureRev):
		return fmt.Errorf("etcd compact %d: revision is newer than the store's: %w", rev, err)
	}
	return s.wrap(fmt.Sprintf("compact %d", rev), err)
}

// Limits reports the batch and value limits: etcd's default server limits
// less the request's own encoding.
func (s *Store) Limits() kvdriver.Limits { return limits }

// Close ends the store's watches and gives up its share of the client,
// closing the connection when no other Store uses it. It is
// idempotent; later calls return nil and other methods ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.watches.Wait()
	if err := s.shared.release(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd close: %w", err)
	}
	return nil
}
