package etcdtest

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/devstack"
)

// startTimeout bounds how long a helper waits for a server to be ready; a
// loaded CI machine can take several seconds to elect a leader.
const startTimeout = time.Minute

// New starts a single-member server in tb.TempDir() (fsync off) and stops
// it when the test ends.
func New(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := StartServer(ctx, Options{Dir: tb.TempDir(), UnsafeNoFsync: true})
	return devstack.Tie(tb, s, err, (*Server).Close, "", "")
}

// StartCluster starts an n-member cluster in tb.TempDir() (fsync off) and
// stops it when the test ends.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := NewCluster(ctx, tb.TempDir(), n, Options{UnsafeNoFsync: true})
	return devstack.Tie(tb, c, err, (*Cluster).Close, "", "")
}
