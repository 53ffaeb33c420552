package etcd

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Stores of one process that name the same cluster with the same
// credentials share one clientv3 client: one gRPC connection, and one
// watch stream for all their watches (clientv3 multiplexes watches whose
// contexts carry the same metadata, and every watch here carries
// WithRequireLeader). Hundreds of watchers in a process then cost etcd one
// connection instead of hundreds. The client is closed with the last Store.
var pool = struct {
	mu      sync.Mutex
	clients map[clientKey]*sharedClient
}{clients: map[clientKey]*sharedClient{}}

// clientKey identifies what a client was made from. The password enters
// as a digest so the map holds no second copy of it.
type clientKey struct {
	endpoints                 string
	username                  string
	password                  [sha256.Size]byte
	tls                       bool
	caFile, certFile, keyFile string
	dialTimeout               int64
}

func keyOf(cfg Config) clientKey {
	return clientKey{
		endpoints:   strings.Join(cfg.Endpoints, ","),
		username:    cfg.Username,
		password:    sha256.Sum256([]byte(cfg.Password)),
		tls:         cfg.TLS,
		caFile:      cfg.CAFile,
		certFile:    cfg.CertFile,
		keyFile:     cfg.KeyFile,
		dialTimeout: int64(cfg.DialTimeout),
	}
}

// sharedClient is a client and the number of Stores holding it. ready is
// closed once client or err is set, so a slow connect to one cluster does
// not hold the pool's lock.
type sharedClient struct {
	key    clientKey
	ready  chan struct{}
	client *clientv3.Client
	err    error
	refs   int
}

// acquire returns the pool's client for cfg, creating it if need be. On
// success the caller owns one reference and gives it back with release.
func acquire(ctx context.Context, cfg Config, tlsCfg *tls.Config) (*sharedClient, error) {
	k := keyOf(cfg)
	pool.mu.Lock()
	sc, ok := pool.clients[k]
	if ok && !cfg.PrivateClient {
		sc.refs++
		pool.mu.Unlock()
		select {
		case <-sc.ready:
		case <-ctx.Done():
			sc.release()
			return nil, ctx.Err()
		}
		if sc.err != nil {
			sc.release()
			return nil, sc.err
		}
		return sc, nil
	}
	sc = &sharedClient{key: k, ready: make(chan struct{}), refs: 1}
	if !cfg.PrivateClient {
		pool.clients[k] = sc
	}
	pool.mu.Unlock()

	sc.client, sc.err = clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		Username:    cfg.Username,
		Password:    cfg.Password,
		// Libraries don't log: errors are returned to the caller.
		Logger: zap.NewNop(),
		// The client outlives the Open that made it.
		Context: context.Background(),
	})
	close(sc.ready)
	if sc.err != nil {
		// A failed connect is not cached: the next Open tries again.
		pool.mu.Lock()
		if pool.clients[k] == sc {
			delete(pool.clients, k)
		}
		pool.mu.Unlock()
		sc.release()
		return nil, sc.err
	}
	return sc, nil
}

// release drops one reference and closes the client with the last.
func (sc *sharedClient) release() error {
	pool.mu.Lock()
	sc.refs--
	if sc.refs > 0 {
		pool.mu.Unlock()
		return nil
	}
	if pool.clients[sc.key] == sc {
		delete(pool.clients, sc.key)
	}
	pool.mu.Unlock()
	if sc.client == nil {
		return nil
	}
	if err := sc.client.Close(); err != nil {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// sharedClients reports how many clients the pool holds, for tests.
func sharedClients() int {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	return len(pool.clients)
}
