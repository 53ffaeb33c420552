package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.etcd.io/etcd/server/v3/embed"
)

// EtcdOptions configure an EtcdServer started by StartEtcdServer.
type EtcdOptions struct {
	// Dir holds the member's data (Dir/data) and log (Dir/etcd.log). It is
	// created if missing. Required.
	Dir string
	// Name is the member name; default "default".
	Name string
	// ClientPort and PeerPort are loopback ports; 0 picks a free one. The
	// chosen ports are kept across Stop and Start.
	ClientPort, PeerPort int
	// LogLevel is the zap level of the server log ("debug" … "fatal");
	// default "error".
	LogLevel string
	// LogOutput is "stderr", "stdout" or a file path; default Dir/etcd.log.
	LogOutput string
	// UnsafeNoFsync skips fsync: faster, and safe as long as the process
	// (not just the server) does not crash. For tests.
	UnsafeNoFsync bool
	// MaxRequestBytes and MaxTxnOps override etcd's request limits
	// (--max-request-bytes, --max-txn-ops) when not zero.
	MaxRequestBytes, MaxTxnOps uint

	// initialCluster and clusterToken are set by NewEtcdCluster.
	initialCluster string
	clusterToken   string
}

// EtcdServer is one embedded etcd member. Its methods are safe for concurrent
// use.
type EtcdServer struct {
	opts EtcdOptions

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// Start starts a single-member etcd server with its data in dir, on free
// loopback ports, and waits until it serves clients.
func StartEtcd(ctx context.Context, dir string) (*EtcdServer, error) {
	return StartEtcdServer(ctx, EtcdOptions{Dir: dir})
}

// StartEtcdServer starts a single-member server (or, through NewEtcdCluster, one
// member of a cluster) and waits until it serves clients.
func StartEtcdServer(ctx context.Context, opts EtcdOptions) (*EtcdServer, error) {
	s, err := newEtcdServer(opts)
	if err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func newEtcdServer(opts EtcdOptions) (*EtcdServer, error) {
	if opts.Dir == "" {
		return nil, errors.New("devstack: etcd: EtcdOptions.Dir is required")
	}
	if opts.Name == "" {
		opts.Name = "default"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "error"
	}
	if opts.LogOutput == "" {
		opts.LogOutput = filepath.Join(opts.Dir, "etcd.log")
	}
	if opts.ClientPort == 0 || opts.PeerPort == 0 {
		ports, err := FreePorts(2)
		if err != nil {
			return nil, err
		}
		if opts.ClientPort == 0 {
			opts.ClientPort = ports[0]
		}
		if opts.PeerPort == 0 {
			opts.PeerPort = ports[1]
		}
	}
	if opts.initialCluster == "" {
		opts.initialCluster = opts.Name + "=" + peerURL(opts.PeerPort)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: etcd: create data dir: %w", err)
	}
	return &EtcdServer{opts: opts}, nil
}

func peerURL(port int) string   { return "http://127.0.0.1:" + strconv.Itoa(port) }
func clientURL(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }

// config builds a fresh embed.Config: embed mutates the one it is given, so
// every start gets its own.
func (s *EtcdServer) config() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = s.opts.Name
	cfg.Dir = filepath.Join(s.opts.Dir, "data")
	cu, err := url.Parse(clientURL(s.opts.ClientPort))
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(peerURL(s.opts.PeerPort))
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = s.opts.initialCluster
	if s.opts.clusterToken != "" {
		cfg.InitialClusterToken = s.opts.clusterToken
	}
	cfg.LogLevel = s.opts.LogLevel
	cfg.LogOutputs = []string{s.opts.LogOutput}
	cfg.UnsafeNoFsync = s.opts.UnsafeNoFsync
	if s.opts.MaxRequestBytes != 0 {
		cfg.MaxRequestBytes = s.opts.MaxRequestBytes
	}
	if s.opts.MaxTxnOps != 0 {
		cfg.MaxTxnOps = s.opts.MaxTxnOps
	}
	// The HTTP gateway is not used by Lenkwerk; fewer goroutines to stop.
	cfg.EnableGRPCGateway = false
	return cfg, nil
}

// Start starts the server again after Stop, on the same data directory and
// ports, and waits (bounded by ctx) until it serves clients. Starting a
// running server does nothing.
func (s *EtcdServer) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		return nil
	}
	cfg, err := s.config()
	if err != nil {
		return fmt.Errorf("devstack: etcd: config: %w", err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("devstack: etcd: start member %s: %w", s.opts.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("devstack: etcd: member %s failed while starting: %w", s.opts.Name, err)
	case <-ctx.Done():
		e.Close()
		return fmt.Errorf("devstack: etcd: member %s not ready: %w", s.opts.Name, ctx.Err())
	}
	s.etcd = e
	return nil
}

// Stop stops the server and keeps its data. Open client connections are
// closed; etcd waits up to its request timeout (about 7 s) for streams
// such as watches to end. Stopping a stopped server does nothing.
func (s *EtcdServer) Stop() error { return s.stop(false) }

// Kill stops the server as a crash would look to the other members: raft
// stops first, without handing leadership over, then the listeners close.
// The data is kept, so Start brings the member back.
func (s *EtcdServer) Kill() error { return s.stop(true) }

func (s *EtcdServer) stop(hard bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return nil
	}
	e := s.etcd
	s.etcd = nil
	if hard {
		e.Server.HardStop()
	}
	e.Close()
	// Err is closed by Close; an error left on it is a failure while
	// serving, not part of stopping.
	for err := range e.Err() {
		if err != nil && !isClosedErr(err) {
			return fmt.Errorf("devstack: etcd: member %s: %w", s.opts.Name, err)
		}
	}
	return nil
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "use of closed network connection")
}

// Close stops the server; its data directory is left for the caller (tests
// use a temporary one).
func (s *EtcdServer) Close() error { return s.Stop() }

// Running reports whether the server is started.
func (s *EtcdServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// Name returns the member name.
func (s *EtcdServer) Name() string { return s.opts.Name }

// Dir returns the server's directory (data and log).
func (s *EtcdServer) Dir() string { return s.opts.Dir }

// Endpoint returns the client address, "127.0.0.1:port".
func (s *EtcdServer) Endpoint() string { return "127.0.0.1:" + strconv.Itoa(s.opts.ClientPort) }

// Endpoints returns the client address as a list, like EtcdCluster.Endpoints.
func (s *EtcdServer) Endpoints() []string { return []string{s.Endpoint()} }

// URL returns the Lenkwerk store URL of this server, "etcd://127.0.0.1:port".
func (s *EtcdServer) URL() string { return "etcd://" + s.Endpoint() }

// Etcd returns the running embedded server, or nil while stopped. It is
// for tests that need etcd internals (e.g. the raft leader).
func (s *EtcdServer) Etcd() *embed.Etcd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd
}

// FreePorts returns n distinct loopback TCP ports that were free a moment
// ago. They are held open together, so they differ from each other.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("devstack: etcd: find free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
