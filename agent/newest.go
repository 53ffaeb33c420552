package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// resolveNewest sets a single-key table's key (/Servermap) to its newest
// row, read from the database in a snapshot that sees the transaction
// being applied (s.dec.xid). The snapshot may also see later transactions; the
// key then shows a newer state early, and every later transaction touching
// the table reads again, so the key ends equal to the newest row.
func (s *session) resolveNewest(ctx context.Context, r *relation) error {
	key, err := r.tmpl.Key(nil)
	if err != nil {
		return fmt.Errorf("table %s: %w", r.qualified, err)
	}
	t, ok := s.pub[r.qualified]
	if !ok {
		t = tableInfo{schema: r.schema, name: r.name}
	}
	t.pk = r.pk
	// Why the visibility check: PostgreSQL sends a commit to a logical
	// decoding client as soon as its WAL is flushed, but the transaction
	// becomes visible to other sessions' snapshots only later, when the
	// committing backend leaves the ProcArray (after a synchronous
	// standby confirmed it, too: milliseconds to seconds). A read issued
	// right after decoding the commit can therefore miss the transaction
	// and return the previous newest row; if no later transaction touches
	// the table, nothing corrects it (issue 20). So the row is read in one
	// statement together with pg_visible_in_snapshot(xid) on that
	// statement's own snapshot (one statement, one snapshot in READ
	// COMMITTED), and read again until the transaction is visible.
	// Visibility only grows, so every transaction decoded before this one
	// is visible too, and whatever the read returns is at least the state
	// after this transaction. (pg_xact_status would not do: the commit is
	// in pg_xact before it is visible.)
	q := newestSQL(t)
	var v *string
	var since time.Time
	warned := false
	for pause := time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		var visible bool
		if err := s.conn.QueryRow(ctx, q, int64(s.dec.xid)).Scan(&visible, &v); err != nil {
			return fmt.Errorf("table %s, key %s: read newest row: %w", r.qualified, key, err)
		}
		if visible {
			break
		}
		if since.IsZero() {
			since = time.Now()
		}
		if time.Since(since) >= 2*time.Second {
			if err := s.checkNotSyncStandby(ctx); err != nil {
				return err
			}
			if !warned {
				warned = true
				s.a.log.Warn("waiting for a committed transaction to become visible to read a single-key table", "table", r.qualified, "xid", s.dec.xid, "commit_lsn", s.dec.finalLSN)
			}
		}
		s.keepalive() // long waits: wal_sender_timeout
		if sleep(ctx, pause) {
			return ctx.Err()
		}
	}
	if v == nil {
		s.dec.buf.del(key)
		return nil
	}
	if err := s.lim.validatePut(key, []byte(*v)); err != nil {
		return s.rowError(ctx, r.qualified, key, s.dec.finalLSN, err) // nil: skipped
	}
	s.dec.buf.put(key, []byte(*v))
	return nil
}

// newestSQL reads whether the transaction whose 32-bit xid is $1 is
// visible in the statement's snapshot, and the newest row (NULL: none) in
// that same snapshot. The xid is widened to the xid8 of the epoch before
// the snapshot's xmax (a committed xid is less than xmax and less than
// 2^31 transactions behind it).
func newestSQL(t tableInfo) string {
	return `SELECT pg_visible_in_snapshot(x.xid, x.snap), (` + selectSQL(t, true) + `)
FROM (SELECT s.snap, (m.xmax - ((m.xmax % 4294967296) - $1::bigint + 4294967296) % 4294967296)::text::xid8 AS xid
      FROM (SELECT pg_current_snapshot() AS snap) s,
           LATERAL (SELECT pg_snapshot_xmax(s.snap)::text::bigint AS xmax) m) x`
}

// checkNotSyncStandby fails when the agent's own walsender is a
// synchronous standby: a committing transaction then waits for the agent
// to confirm it, and stays invisible until it does, while the agent waits
// for it to become visible before it can apply and confirm it.
func (s *session) checkNotSyncStandby(ctx context.Context) error {
	var state string
	err := s.conn.QueryRow(ctx, `SELECT sync_state FROM pg_stat_replication WHERE pid = $1`, s.repl.PID()).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up the agent's walsender in pg_stat_replication: %w", err)
	}
	if state == "sync" || state == "quorum" {
		return fmt.Errorf("transaction %d is committed but not visible after %s, and the agent is a synchronous standby (pg_stat_replication.sync_state %s): commits wait for the agent, which waits for them to read a single-key table; take the agent's application_name out of synchronous_standby_names", s.dec.xid, "2s", state)
	}
	return nil
}
