package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var snapshotName = regexp.MustCompile(`^[0-9A-Fa-f-]+$`)

// initialSync copies every published table from one consistent snapshot:
// the slot is recreated with CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT (a
// slot created with SQL exports none), the tables are read as to_jsonb in a
// REPEATABLE READ transaction on that snapshot, keys of the agent's key
// space that match no row are deleted, and the last batch writes the
// checkpoint: the slot's consistent point, from which streaming continues
// without gap or overlap.
func (s *session) initialSync(ctx context.Context) error {
	slot := s.a.cfg.Slot
	var active bool
	var pid *int32
	var db *string
	var ours bool
	err := s.conn.QueryRow(ctx, `SELECT active, active_pid, database::text, coalesce(database = current_database(), false) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active, &pid, &db, &ours)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if exists && !ours {
		// Slot names are cluster-wide: never drop another database's.
		return fmt.Errorf("replication slot %s belongs to another database (%v); choose another slot name", slot, deref(db))
	}
	if exists && active {
		p := int32(0)
		if pid != nil {
			p = *pid
		}
		return fmt.Errorf("%w: replication slot %q is active for PID %d", ErrSlotInUse, slot, p)
	}
	s.a.log.Info("initial sync: copying every published table from a new snapshot")
	// Tables the old checkpoint names: those no longer published have
	// left keys behind.
	// Read under the agent lock, this is the fence of the whole sync
	// (Resync reads nothing before).
	old, fence, _, err := readCheckpoint(ctx, s.a.cfg.Store, s.a.ckptKey)
	if err != nil {
		return err
	}
	s.w.fence = fence
	// Forget the old checkpoint before the slot: a crash from here on must
	// lead to another copy, never to streaming from a stale position. The
	// fence is 0 from here until the new checkpoint is written.
	if err := s.write(ctx, batch{ops: []kvdriver.Op{kvdriver.Delete(s.a.ckptKey)}}); err != nil {
		return fmt.Errorf("remove checkpoint: %w", err)
	}
	if exists {
		if _, err := s.conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
	}
	if _, err := pglogrepl.CreateReplicationSlot(ctx, s.repl, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Mode:           pglogrepl.LogicalReplication,
		SnapshotAction: "NOEXPORT_SNAPSHOT",
	}); err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	// The copy comes from a temporary slot's snapshot created after a
	// catalog change, not from the new slot's own: PostgreSQL 15's
	// snapshot builder ignores commits while a slot is in
	// BUILDING_SNAPSHOT, so a TRUNCATE committed then leaves the slot
	// unable to decode, for good, what transactions begun before its
	// consistent point write into that table ("could not map filenode",
	// XX000; integration/pgtest.SlotPoison). A catalog change committed
	// after the consistent point gives the slot a catalog snapshot that
	// sees the TRUNCATE for what starts later, and the temporary slot
	// waits for every transaction begun before it: streaming from its
	// consistent point decodes none of the transactions the slot cannot.
	s.healSlot(ctx)
	start := time.Now()
	exp, err := s.exportSnapshot(ctx, fmt.Sprintf("%.40s_sync_%d", slot, s.repl.PID()), nil)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	defer exp.close()
	point := exp.point
	tables, ops, rows, err := s.copyTables(ctx, exp.snapshot, nil, old.Tables)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	exp.close()
	// The snapshot holds what was committed at the consistent point.
	if err := s.waitStandbys(ctx, point); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	ck := Checkpoint{LSN: point, Time: time.Now().UTC(), Tables: tables, SystemID: s.hist.SystemID, Timeline: s.hist.Timeline}
	if err := s.write(ctx, batch{ops: ops, ck: &ck}); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	s.setCheckpoint(ck)
	s.a.log.Info("initial sync done", "tables", len(tables), "rows", rows, "consistent_point", point, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// copyTable copies one table added to the publication while streaming. A
// temporary slot exports a snapshot with consistent point C; the table's
// changes in transactions committed before C are in the copy and are
// skipped in the stream, later ones are applied.
func (s *session) copyTable(ctx context.Context, t tableInfo) error {
	// Creating a slot waits for running transactions to end: keep the
	// main stream's status updates going meanwhile.
	exp, err := s.exportSnapshot(ctx, fmt.Sprintf("%.40s_copy_%d", s.a.cfg.Slot, s.repl.PID()), s.keepalive)
	if err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	defer exp.close()
	point := exp.point
	_, ops, rows, err := s.copyTables(ctx, exp.snapshot, []tableInfo{t}, nil)
	if err != nil {
		return err
	}
	if err := s.waitStandbys(ctx, point); err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	ck := s.ckpt
	ck.SystemID, ck.Timeline = s.hist.SystemID, s.hist.Timeline
	ck.Tables = maps.Clone(s.tables)
	ck.Tables[t.qualified()] = t.shape
	if err := s.write(ctx, batch{ops: ops, ck: &ck}); err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	s.setCheckpoint(ck)
	s.dec.copiedAt[t.qualified()] = point
	s.a.log.Info("table added to the publication: copied", "table", t.qualified(), "rows", rows, "consistent_point", point)
	return nil
}

// exported is a snapshot a temporary slot exports; it lives until close
// (which drops the slot with its connection).
type exported struct {
	conn     *pgconn.PgConn
	snapshot string
	point    pglogrepl.LSN
}

func (e *exported) close() {
	if e.conn != nil {
		e.conn.Close(context.Background())
		e.conn = nil
	}
}

// exportSnapshot creates a temporary slot named name on a replication
// connection of its own and returns its exported snapshot and consistent
// point. Creating a slot waits for every running transaction to end;
// meanwhile tick (if set) is called every status interval.
func (s *session) exportSnapshot(ctx context.Context, name string, tick func()) (*exported, error) {
	conn, err := pgconn.ConnectConfig(ctx, s.rcfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	type created struct {
		res pglogrepl.CreateReplicationSlotResult
		err error
	}
	done := make(chan created, 1)
	go func() {
		res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT",
		})
		done <- created{res, err}
	}()
	var c created
	for waiting := true; waiting; {
		select {
		case c = <-done:
			waiting = false
		case <-time.After(s.a.cfg.StatusInterval):
			if tick != nil {
				tick()
			}
		}
	}
	if c.err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("create temporary slot: %w", c.err)
	}
	point, err := pglogrepl.ParseLSN(c.res.ConsistentPoint)
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("temporary slot: consistent point %q: %w", c.res.ConsistentPoint, err)
	}
	return &exported{conn: conn, snapshot: c.res.SnapshotName, point: point}, nil
}

// healSlot commits a catalog change (a temporary table created and
// dropped), which makes the snapshot builder of every slot build a new
// catalog snapshot (see initialSync). Without the TEMPORARY privilege
// the sync goes on: a slot left undecodable is then replaced when
// streaming fails on it (undecodable).
func (s *session) healSlot(ctx context.Context) {
	if _, err := s.conn.Exec(ctx, `CREATE TEMPORARY TABLE lenkwerk_catalog_change (); DROP TABLE lenkwerk_catalog_change`); err != nil {
		s.a.log.Warn("initial sync: could not commit a catalog change (grant TEMPORARY on the database to the agent's role); a slot made undecodable by a concurrent TRUNCATE is replaced when streaming fails", "err", err)
	}
}

func deref(p *string) string {
	if p == nil {
		return "none"
	}
	return *p
}
