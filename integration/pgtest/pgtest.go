// Package pgtest starts real, throwaway PostgreSQL servers for tests: the
// servers of agent/devstack, tied to the test's life.
//
// A test binary shares one cluster (wal_level=logical) started on first use
// and stopped by Main; each test gets a fresh database from NewDatabase,
// dropped in t.Cleanup. Tests that restart or reconfigure the server start
// a private cluster with StartCluster.
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestX(t *testing.T) {
//		url := pgtest.NewDatabase(t)
//		...
//	}
//
// With LENKWERK_TEST_DATABASE_URL set (a superuser URL of a server with
// wal_level=logical) NewDatabase uses that server instead of starting one.
//
// ArmSlotPoison and SlotPoison.Spring make a logical slot created meanwhile
// undecodable through a PostgreSQL bug (could not map filenode), so tests
// can check what a consumer does with such a slot.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/bagger/lenkwerk/agent/devstack"
)

// The servers are devstack's.
type (
	Cluster = devstack.Cluster
	Options = devstack.Options
	TLS     = devstack.TLS
)

// Start, BinDir, StopStale, ArchiveSettings: see devstack.
var (
	Start           = devstack.Start
	BinDir          = devstack.BinDir
	StopStale       = devstack.StopStale
	ArchiveSettings = devstack.ArchiveSettings
)

// MakeArchiveDir makes a WAL archive directory the server can write,
// removed when the test ends.
func MakeArchiveDir(tb testing.TB) string { return devstack.MakeArchiveDir(tb) }

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Main runs the tests of m and stops the shared cluster afterwards. Call it
// from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.Destroy(); err != nil {
			fmt.Fprintf(os.Stderr, "devstack: postgres: stop shared cluster: %v\n", err)
		}
	}
	os.Exit(code)
}

// Shared returns the test binary's shared cluster, starting it on first use.
// Without Main in TestMain the cluster outlives the test binary, so packages
// that use it must call Main from TestMain.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	sharedOnce.Do(func() {
		if raw := os.Getenv("LENKWERK_TEST_DATABASE_URL"); raw != "" {
			u, err := url.Parse(raw)
			if err != nil {
				sharedErr = fmt.Errorf("LENKWERK_TEST_DATABASE_URL: cannot parse URL")
				return
			}
			shared = devstack.External(u)
			return
		}
		shared, sharedErr = Start(context.Background(), Options{})
	})
	if sharedErr != nil {
		tb.Fatalf("devstack: postgres: %v", sharedErr)
	}
	return shared
}

// NewDatabase creates a fresh database on the shared cluster and returns a
// superuser URL for it; the database (and any replication slot in it) is
// dropped when the test ends.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	return Shared(tb).NewDatabase(tb)
}

// StartCluster starts a private cluster that the test may stop, restart or
// configure; it is destroyed when the test ends.
func StartCluster(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	c, err := Start(context.Background(), opts)
	return devstack.Tie(tb, c, err, (*Cluster).Destroy, "devstack: postgres: ", "devstack: postgres: destroy cluster: ")
}
