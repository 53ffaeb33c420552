package pgtest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SlotPoison makes a logical replication slot undecodable while it is being
// created, through a PostgreSQL bug (present in 15.18 and 15.20; upstream
// thread "Fix logical decoding not track transaction during
// SNAPBUILD_BUILDING_SNAPSHOT", pgsql-hackers, November 2025): while a new
// slot's snapshot builder is in BUILDING_SNAPSHOT it ignores commits, so a
// TRUNCATE committed then, with a later transaction still running when the
// builder reaches FULL_SNAPSHOT, is missing from the catalog snapshot of
// every transaction that starts before the slot is consistent. When such a
// transaction writes into the truncated table (its new relfilenode) and
// commits after the consistent point, every START_REPLICATION of the slot
// fails with `could not map filenode "…" to relation OID` (XX000) once it
// reaches that commit: the slot's restart_lsn stays at its creation point,
// and each session rebuilds the same wrong snapshot.
//
// Arm it before the slot creation starts, then Spring it while the
// creation runs, whoever creates the slot (a test, or an agent's initial
// sync); the database needs no other writer.
type SlotPoison struct {
	url string
	a   *pgx.Conn // the transaction the slot creation waits for
	xa  uint32
}

// ArmSlotPoison opens, in the database of url, the transaction that a slot
// creation started afterwards has to wait for.
func ArmSlotPoison(ctx context.Context, url string) (*SlotPoison, error) {
	a, xa, err := beginXid(ctx, url, "SELECT 1")
	if err != nil {
		return nil, fmt.Errorf("slot poison: %w", err)
	}
	return &SlotPoison{url: url, a: a, xa: xa}, nil
}

// Close ends the poison's transaction if Spring did not.
func (p *SlotPoison) Close() { p.a.Close(context.Background()) }

// Poisoned is the transaction a slot cannot decode, still open.
type Poisoned struct {
	// Xid is the transaction's xid.
	Xid  uint32
	conn *pgx.Conn
}

// Commit commits the transaction: decoding the slot fails at its commit.
func (t *Poisoned) Commit(ctx context.Context) error {
	defer t.conn.Close(context.Background())
	if _, err := t.conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("slot poison: commit: %w", err)
	}
	return nil
}

// Spring waits until a backend creating a slot waits for the armed
// transaction, then runs truncate (a TRUNCATE of a table) and lets the
// builder reach FULL_SNAPSHOT with another transaction running, begins a
// transaction running write (a write into the truncated table) and lets
// the creation of slot reach its consistent point. The caller commits the
// returned transaction.
func (p *SlotPoison) Spring(ctx context.Context, slot, truncate, write string) (*Poisoned, error) {
	defer p.Close()
	admin, err := pgx.Connect(ctx, p.url)
	if err != nil {
		return nil, fmt.Errorf("slot poison: %w", err)
	}
	defer admin.Close(context.Background())
	builder, err := waiterFor(ctx, admin, p.xa, 0)
	if err != nil {
		return nil, err
	}
	// Started after BUILDING_SNAPSHOT, it still runs at FULL_SNAPSHOT, so
	// the builder's xmin stays below the TRUNCATE's xid.
	o, xo, err := beginXid(ctx, p.url, "SELECT 1")
	if err != nil {
		return nil, fmt.Errorf("slot poison: %w", err)
	}
	defer o.Close(context.Background())
	if _, err := admin.Exec(ctx, truncate); err != nil {
		return nil, fmt.Errorf("slot poison: %s: %w", truncate, err)
	}
	if _, err := p.a.Exec(ctx, "COMMIT"); err != nil {
		return nil, fmt.Errorf("slot poison: %w", err)
	}
	// FULL_SNAPSHOT: the builder waits for o.
	if _, err := waiterFor(ctx, admin, xo, builder); err != nil {
		return nil, err
	}
	w, xw, err := beginXid(ctx, p.url, write)
	if err != nil {
		return nil, fmt.Errorf("slot poison: %s: %w", write, err)
	}
	if _, err = o.Exec(ctx, "COMMIT"); err == nil {
		err = waitConsistent(ctx, admin, slot)
	}
	if err != nil {
		w.Close(context.Background())
		return nil, fmt.Errorf("slot poison: %w", err)
	}
	return &Poisoned{Xid: xw, conn: w}, nil
}

// WaiterFor waits until a backend waits for the lock of transaction xid
// (as a slot creation waits for the transactions in progress) and returns
// its pid.
func WaiterFor(ctx context.Context, url string, xid uint32) (int32, error) {
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer admin.Close(context.Background())
	return waiterFor(ctx, admin, xid, 0)
}

// beginXid opens a transaction on a new connection, runs sql in it and
// assigns it an xid.
func beginXid(ctx context.Context, url, sql string) (*pgx.Conn, uint32, error) {
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, 0, err
	}
	var xid uint32
	_, err = c.Exec(ctx, "BEGIN")
	if err == nil {
		_, err = c.Exec(ctx, sql)
	}
	if err == nil {
		err = c.QueryRow(ctx, "SELECT txid_current()::bigint::int").Scan(&xid)
	}
	if err != nil {
		c.Close(context.Background())
		return nil, 0, err
	}
	return c, xid, nil
}

// poisonWait bounds each wait of Spring.
const poisonWait = 2 * time.Minute

// waiterFor waits until a backend (pid, when not 0) waits for the lock of
// transaction xid, and returns its pid.
func waiterFor(ctx context.Context, admin *pgx.Conn, xid uint32, pid int32) (int32, error) {
	deadline := time.Now().Add(poisonWait)
	for {
		var waiter int32
		err := admin.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted
AND transactionid::text = $1 AND ($2 = 0 OR pid = $2) LIMIT 1`, fmt.Sprint(xid), pid).Scan(&waiter)
		if err == nil {
			return waiter, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("slot poison: %w", err)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("slot poison: no slot creation waits for transaction %d after %v", xid, poisonWait)
		}
		if err := pause(ctx); err != nil {
			return 0, err
		}
	}
}

// waitConsistent waits until the creation of slot has found its consistent
// point (the slot then has a confirmed_flush_lsn).
func waitConsistent(ctx context.Context, admin *pgx.Conn, slot string) error {
	deadline := time.Now().Add(poisonWait)
	for {
		var ok bool
		err := admin.QueryRow(ctx, `SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&ok)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("slot poison: %w", err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot poison: slot %s found no consistent point after %v", slot, poisonWait)
		}
		if err := pause(ctx); err != nil {
			return err
		}
	}
}

func pause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(20 * time.Millisecond):
		return nil
	}
}
