package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSlotPoison reproduces the PostgreSQL snapshot-builder bug SlotPoison
// relies on, and what gets a slot out of it:
//
//   - the slot's exported snapshot does not hold the poisoned transaction,
//     and streaming the slot fails at its commit, across restarts;
//   - the slot keeps the wrong catalog snapshot after that transaction:
//     streaming from a later consistent point (a temporary slot's, whose
//     snapshot holds the poisoned transaction's rows) still fails at the
//     next write into the truncated table;
//   - a transaction that changes the catalog, committed after the slot's
//     consistent point, makes the slot build a right snapshot: from the
//     consistent point of a temporary slot created after it, the slot
//     streams again, and that temporary slot's snapshot holds every row.
//
// If the first stream does not fail, PostgreSQL no longer has the bug:
// tests that use SlotPoison then test nothing, and the agent's workaround
// may be unnecessary.
func TestSlotPoison(t *testing.T) {
	// Without autovacuum: an auto-analyze (pg_statistic) is a catalog
	// change, which heals the slot before the test expects it.
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"autovacuum": "off"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := c.URL("postgres", "")
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `CREATE TABLE tbl (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE tbl; INSERT INTO tbl VALUES (1)`); err != nil {
		t.Fatal(err)
	}

	p, err := pgtest.ArmSlotPoison(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	main := createSlot(ctx, url, "main", false)
	bad, err := p.Spring(ctx, "main", "TRUNCATE tbl", "INSERT INTO tbl VALUES (2)")
	if err != nil {
		t.Fatal(err)
	}
	cr := <-main
	if cr.err != nil {
		t.Fatal(cr.err)
	}
	defer cr.conn.Close(context.Background())
	start, err := pglogrepl.ParseLSN(cr.res.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	// A copy from the slot's own snapshot cannot hold the transaction: it
	// commits later, and only the stream can bring it.
	if ids := copyIDs(t, ctx, url, cr.res.SnapshotName); len(ids) != 0 {
		t.Fatalf("copy from the slot's snapshot: ids %v, want none", ids)
	}
	cr.conn.Close(ctx)

	// A temporary slot waits for the poisoned transaction.
	tmp := createSlot(ctx, url, "copy", true)
	if _, err := pgtest.WaiterFor(ctx, url, bad.Xid); err != nil {
		t.Fatal(err)
	}
	if err := bad.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	later := copyPoint(t, ctx, url, <-tmp, []int32{2})
	mustFail(t, ctx, url, start, "", "from the slot's consistent point")
	mustFail(t, ctx, url, later, "INSERT INTO tbl VALUES (3)", "from a temporary slot's later consistent point")
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	mustFail(t, ctx, url, start, "", "from the slot's consistent point, after a restart")

	// A catalog change committed now heals the slot for what starts after it.
	heal, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer heal.Close(context.Background())
	if _, err := heal.Exec(ctx, `CREATE TEMP TABLE heal (); DROP TABLE heal`); err != nil {
		t.Fatal(err)
	}
	healed := copyPoint(t, ctx, url, <-createSlot(ctx, url, "copy2", true), []int32{2, 3})
	got, err := streamOnce(ctx, url, "main", healed, "INSERT INTO tbl VALUES (4)")
	if err != nil || got != 1 {
		t.Fatalf("stream from the consistent point %s of a temporary slot created after a catalog change: %d inserts, %v; want 1 insert (the row written after the copy)", healed, got, err)
	}
}

// mustFail streams the slot main from start and wants the poison's error.
func mustFail(t *testing.T, ctx context.Context, url string, start pglogrepl.LSN, write, what string) {
	t.Helper()
	_, err := streamOnce(ctx, url, "main", start, write)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "XX000" || !strings.HasPrefix(pgErr.Message, "could not map filenode") {
		t.Fatalf("stream %s (%s): %v; want XX000 could not map filenode", what, start, err)
	}
	t.Logf("stream %s (%s): %v", what, start, err)
}

// copyPoint checks the ids of tbl in the snapshot a temporary slot exported
// and returns the slot's consistent point.
func copyPoint(t *testing.T, ctx context.Context, url string, cr created, want []int32) pglogrepl.LSN {
	t.Helper()
	if cr.err != nil {
		t.Fatal(cr.err)
	}
	defer cr.conn.Close(context.Background())
	if ids := copyIDs(t, ctx, url, cr.res.SnapshotName); !slices.Equal(ids, want) {
		t.Fatalf("copy from the temporary slot's snapshot: ids %v, want %v", ids, want)
	}
	point, err := pglogrepl.ParseLSN(cr.res.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	return point
}

type created struct {
	conn *pgconn.PgConn
	res  pglogrepl.CreateReplicationSlotResult
	err  error
}

// createSlot creates a slot with an exported snapshot in the background;
// the snapshot lives until the returned connection is used or closed.
func createSlot(ctx context.Context, url, name string, temporary bool) <-chan created {
	done := make(chan created, 1)
	go func() {
		conn, err := pgconn.Connect(ctx, url+"&replication=database")
		if err != nil {
			done <- created{err: err}
			return
		}
		res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{Temporary: temporary, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
		if err != nil {
			conn.Close(context.Background())
		}
		done <- created{conn, res, err}
	}()
	return done
}

// copyIDs reads tbl's ids in an exported snapshot.
func copyIDs(t *testing.T, ctx context.Context, url, snapshot string) []int32 {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		t.Fatal(err)
	}
	var ids []int32
	if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM tbl`).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	return ids
}

// streamOnce streams slot from start until its first commit is decoded (and
// returns the inserts decoded up to it) or the server reports an error.
// When write is set, it runs once streaming has started.
func streamOnce(ctx context.Context, url, slot string, start pglogrepl.LSN, write string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// The walsender of the previous stream may still hold the slot for a
	// moment after its client closed the connection.
	if err := testutil.Poll(ctx, time.Minute, "slot "+slot+" released", func(ctx context.Context) (bool, error) {
		return slotReleased(ctx, url, slot)
	}); err != nil {
		return 0, err
	}
	conn, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, conn, slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'pub'"},
	}); err != nil {
		return 0, err
	}
	if write != "" {
		w, err := pgx.Connect(ctx, url)
		if err != nil {
			return 0, err
		}
		_, err = w.Exec(ctx, write)
		w.Close(context.Background())
		if err != nil {
			return 0, err
		}
	}
	inserts := 0
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, err
		}
		switch msg := msg.(type) {
		case *pgproto3.ErrorResponse:
			return 0, pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyData:
			if msg.Data[0] != pglogrepl.XLogDataByteID {
				continue
			}
			x, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return 0, err
			}
			m, err := pglogrepl.Parse(x.WALData)
			if err != nil {
				return 0, err
			}
			switch m.(type) {
			case *pglogrepl.InsertMessage:
				inserts++
			case *pglogrepl.CommitMessage:
				return inserts, nil
			}
		default:
			return 0, fmt.Errorf("unexpected %T", msg)
		}
	}
}

// slotReleased reports whether no walsender holds the slot.
func slotReleased(ctx context.Context, url, slot string) (bool, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var active bool
	err = conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
	return !active, err
}
