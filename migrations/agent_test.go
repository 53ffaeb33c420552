package migrations_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
)

// memStore opens a new in-memory store, closed when the test ends.
func memStore(t *testing.T, ctx context.Context) *kvdriver.Store {
	t.Helper()
	store, err := kvdriver.Open(ctx, fmt.Sprintf("mem://%x", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// runAgent runs the Lenkwerk agent on the database at dbURL, mirroring into
// store, until the returned stop is called (at the latest when the test
// ends); stop reports the agent's error.
func runAgent(t *testing.T, ctx context.Context, dbURL string, store *kvdriver.Store) (stop func()) {
	t.Helper()
	a, err := agent.New(agent.Config{DatabaseURL: dbURL, Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Go(t, ctx, "agent", a.Run)
}

// waitMirrored waits until the store equals the database's published rows.
func waitMirrored(t *testing.T, ctx context.Context, dbURL string, store *kvdriver.Store) {
	t.Helper()
	if diff, err := converge.Wait(ctx, converge.URL(dbURL), store, converge.Options{}, 60*time.Second); err != nil {
		t.Fatalf("the agent did not mirror the database: %v\n%s", err, diff)
	}
}

// asUser returns dbURL with another user.
func asUser(t *testing.T, dbURL, user string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}
