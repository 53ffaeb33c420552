package pgkv_test

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
)

// harness runs the suite on a private cluster, so Reconnect can stop and
// start it.
type harness struct {
	cluster *pgtest.Cluster
	url     string
}

func (h *harness) MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error) {
	return kvdriver.Open(ctx, h.url)
}

func (h *harness) Close() {}

func (h *harness) StopServer(ctx context.Context) error  { return h.cluster.Stop() }
func (h *harness) StartServer(ctx context.Context) error { return h.cluster.Start() }

var _ kvtest.Restarter = (*harness)(nil)

func TestConformance(t *testing.T) {
	kvtest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kvtest.Harness, error) {
		c := pgtest.StartCluster(t, pgtest.Options{})
		return &harness{cluster: c, url: c.NewDatabase(t)}, nil
	})
}
