package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bagger/lenkwerk/kvdriver"
)

func init() {
	kvdriver.Register(Scheme, kvdriver.ConfigOpener(ConfigFromURL, Open))
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

// Driver is the kvdriver.Driver of an etcd cluster; Open returns it inside
// a kvdriver.Store.
type Driver struct {
	client *clientv3.Client
	// shared is the client's entry in the process-wide pool (see pool.go).
	shared *sharedClient
	cfg    Config

	// ctx is cancelled by Close and ends every watch.
	ctx     context.Context
	cancel  context.CancelFunc
	watches sync.WaitGroup

	// watchRestarts counts etcd watches re-established after their stream
	// ended, for tests.
	watchRestarts atomic.Int64
}

var (
	_ kvdriver.Driver = (*Driver)(nil)
	_ kvdriver.Putter = (*Driver)(nil)
)

// Open connects to the etcd cluster of cfg and checks that a member
// answers (and, with a username, that the credentials are accepted) within
// cfg.DialTimeout. It is what kvdriver.Open does for an etcd:// URL, from
// the Config the URL parses into.
func Open(ctx context.Context, cfg Config) (*kvdriver.Store, error) {
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
	d := &Driver{client: shared.client, shared: shared, cfg: cfg}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return kvdriver.NewStore(Scheme, d), nil
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
// features the Store does not offer (reach the Driver with Store.As).
// Other Stores of the process opened with the same endpoints and
// credentials share it: do not close it.
func (s *Driver) Client() *clientv3.Client { return s.client }

// request bounds a unary call by the request timeout.
func (s *Driver) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

// ErrorCode implements kvdriver.Driver: etcd's size refusals are TooLarge,
// compaction is Compacted, refused credentials or privileges are
// PermissionDenied, an unreachable cluster is Unavailable.
func (s *Driver) ErrorCode(err error) kvdriver.ErrorCode {
	switch {
	case errors.Is(err, rpctypes.ErrRequestTooLarge), errors.Is(err, rpctypes.ErrTooManyOps):
		return kvdriver.TooLarge
	case errors.Is(err, rpctypes.ErrDuplicateKey):
		return kvdriver.InvalidArgument
	case errors.Is(err, rpctypes.ErrCompacted):
		return kvdriver.Compacted
	case status.Code(err) == codes.ResourceExhausted:
		// gRPC refused the message size before etcd saw it.
		return kvdriver.TooLarge
	case denied(err):
		return kvdriver.PermissionDenied
	case status.Code(err) == codes.Unavailable, status.Code(err) == codes.DeadlineExceeded:
		return kvdriver.Unavailable
	}
	return kvdriver.Unknown
}

// denied reports an error that retrying cannot cure: missing permission or
// credentials. clientv3 turns a refused watch's cancel reason into a plain
// error carrying the gRPC status text, so the message is matched too.
func denied(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrAuthFailed} {
		if errors.Is(err, e) || strings.Contains(err.Error(), e.Error()) {
			return true
		}
	}
	return false
}

// Get implements kvdriver.Driver.
func (s *Driver) Get(ctx context.Context, key string) (kvdriver.KV, error) {
	ctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return kvdriver.KV{}, err
	}
	if len(resp.Kvs) == 0 {
		return kvdriver.KV{}, kvdriver.ErrNotFound
	}
	kv := resp.Kvs[0]
	return kvdriver.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}, nil
}

// Put implements kvdriver.Putter: one etcd Put, no transaction.
func (s *Driver) Put(ctx context.Context, key string, value []byte) (int64, error) {
	ctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.client.Put(ctx, key, string(value))
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Delete implements kvdriver.Putter: it returns the delete's own
// revision, or the current one when the key was absent.
func (s *Driver) Delete(ctx context.Context, key string) (int64, error) {
	ctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.client.Delete(ctx, key)
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// List implements kvdriver.Driver. The key itself and its subtree are read
// in one read-only transaction, so both come from the same revision.
func (s *Driver) List(ctx context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	ctx, cancel := s.request(ctx)
	defer cancel()
	var ops []clientv3.Op
	if prefix == "/" {
		ops = []clientv3.Op{clientv3.OpGet("/", clientv3.WithPrefix())}
	} else {
		ops = []clientv3.Op{clientv3.OpGet(prefix), clientv3.OpGet(prefix+"/", clientv3.WithPrefix())}
	}
	resp, err := s.client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, 0, err
	}
	var kvs []kvdriver.KV
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			kvs = append(kvs, kvdriver.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
		}
	}
	return kvs, resp.Header.Revision, nil
}

// Apply implements kvdriver.Driver: one etcd transaction, its Requires as
// its comparisons.
func (s *Driver) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	ctx, cancel := s.request(ctx)
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
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%w (revision %d)", kvdriver.ErrConflict, resp.Header.Revision)
	}
	return resp.Header.Revision, nil
}

// Compact implements kvdriver.Driver. Compacting a revision that is
// already compacted succeeds.
//
// etcd's own compaction at r keeps the events of r and discards older
// ones, so the store compacts at rev+1; when rev is the current revision
// (rev+1 is in the future for etcd) it compacts at rev, which keeps the
// events of rev itself.
func (s *Driver) Compact(ctx context.Context, rev int64) error {
	if rev <= 0 {
		return fmt.Errorf("revision %d is not positive", rev)
	}
	ctx, cancel := s.request(ctx)
	defer cancel()
	_, err := s.client.Compact(ctx, rev+1)
	if errors.Is(err, rpctypes.ErrFutureRev) {
		_, err = s.client.Compact(ctx, rev)
	}
	switch {
	case err == nil, errors.Is(err, rpctypes.ErrCompacted):
		return nil
	case errors.Is(err, rpctypes.ErrFutureRev):
		return fmt.Errorf("revision is newer than the store's: %w", err)
	}
	return err
}

// Limits implements kvdriver.Driver: etcd's default server limits less
// the request's own encoding.
func (s *Driver) Limits() kvdriver.Limits { return limits }

// Close implements kvdriver.Driver: it ends the store's watches and gives
// up its share of the client, closing the connection when no other Store
// uses it.
func (s *Driver) Close() error {
	s.cancel()
	s.watches.Wait()
	if err := s.shared.release(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
