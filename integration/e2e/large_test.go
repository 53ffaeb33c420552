package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

// TestLargeTransaction commits one transaction far larger than an etcd
// batch (128 operations), stops the store while the agent is applying it
// in chunks and kills the agent there. The store then holds part of the
// transaction, and its checkpoint must still be before the transaction:
// only the last chunk may carry it. After a restart the agent must replay
// the transaction and converge.
func TestLargeTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	s.exec(ctx, `SELECT storage.save_config('first', '1')`)
	s.agent.Start()
	s.converge(ctx, 60*time.Second)

	// The last WAL position before the commit record: a checkpoint past
	// it would cover the transaction.
	const rows = 50000
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO storage.config (key, value) SELECT 'bulk/' || lpad(g::text, 6, '0'), json_build_object('g', g) FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}
	var preCommit string
	if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&preCommit); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	lsnPreCommit, err := pglogrepl.ParseLSN(preCommit)
	if err != nil {
		t.Fatal(err)
	}

	// Stop the store as soon as the first rows arrived.
	err = testutil.Poll(ctx, 60*time.Second, "first rows of the transaction in the store", func(ctx context.Context) (bool, error) {
		_, err := s.store.Get(ctx, "/Config/bulk%2F000001")
		if errors.Is(err, kvdriver.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	stopEtcd(t, s, true)
	s.agent.Kill()
	startEtcd(t, s)

	kvs, _, err := s.store.List(ctx, "/Config")
	if err != nil {
		t.Fatal(err)
	}
	bulk := 0
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, "/Config/bulk%2F") {
			bulk++
		}
	}
	cp, err := s.checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the kill: %d of %d rows in the store, checkpoint %s, commit record after %s", bulk, rows, cp, lsnPreCommit)
	if bulk < rows && cp > lsnPreCommit {
		t.Errorf("the store holds %d of %d rows of the transaction but its checkpoint %s is past the transaction's commit (after %s): a restart would skip the rest", bulk, rows, cp, lsnPreCommit)
	}
	if bulk == rows {
		t.Logf("the agent applied the whole transaction before the store stopped: the partial state was not observed this time")
	}

	s.agent.Start()
	s.converge(ctx, 120*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}
