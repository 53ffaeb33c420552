package kvtest

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Harness connects the conformance suite to one driver and one server.
// The suite opens several stores on the same server (a writer, watchers)
// and isolates its tests by key prefix, so one server serves the whole run.
type Harness interface {
	// MakeStore opens a new Store (a new connection) on the harness's
	// server. The suite closes it.
	MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error)
	// Close releases the harness and its server.
	Close()
}

// Restarter is implemented by harnesses whose server can be stopped and
// started again on the same data (etcd, PostgreSQL). The suite then checks
// that stores and watches survive the outage.
type Restarter interface {
	// StopServer stops the server; stores must see errors, not hang forever.
	StopServer(ctx context.Context) error
	// StartServer starts it again with its data (keys and revisions kept).
	StartServer(ctx context.Context) error
}

// HarnessMaker makes the harness for one run of the suite.
type HarnessMaker func(ctx context.Context, t *testing.T) (Harness, error)
