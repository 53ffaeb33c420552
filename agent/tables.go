package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Which tables the agent mirrors: the publication's, polled every
// Config.PollInterval and at the commit of a transaction that changed a
// table not copied yet.

// admitTables runs at a transaction's commit, before its batch is handed
// over, when the decoder left out changes of tables the agent does not
// mirror (dec.admitting). A table added to the publication since the last
// poll is copied now, from the snapshot of a slot created after this
// commit was decoded: the snapshot is built from the WAL, so it holds this
// transaction (visible or not yet to other sessions' snapshots, see
// resolveNewest) and the copy has the transaction's rows of the table once,
// the left-out changes being in it. The copy's batch goes before the
// transaction's, which stays whole. A table not published is not mirrored,
// as before. Deciding at the boundary rather than at the first change
// means a multi-table TRUNCATE is decoded whole first: the tables the agent
// mirrors have their keys listed and deleted, the added one comes from the
// copy, empty.
func (s *session) admitTables(ctx context.Context) error {
	if len(s.dec.admitting) == 0 {
		return nil
	}
	// A copy must follow the batches in flight.
	if err := s.sync(ctx); err != nil {
		return err
	}
	if err := s.pollTables(ctx); err != nil {
		return err
	}
	for _, table := range slices.Sorted(maps.Keys(s.dec.admitting)) {
		// No longer published (removed or dropped since this
		// transaction): not mirrored any more, like every table removed
		// from the publication.
		if s.tables[table] == "" && !s.unmirrored[table] {
			s.unmirrored[table] = true
			s.a.log.Info("changes of a table no longer published are not mirrored", "table", table)
		}
	}
	return nil
}

// retainedWALWarnEvery spaces the retained-WAL warnings of one slot: the
// condition lasts, and a poll every few seconds would flood the log.
const retainedWALWarnEvery = 5 * time.Minute

// pollTables mirrors tables added to the publication (existing rows
// included), copies again tables whose columns changed (to_jsonb of every
// row changed, though no row change is streamed) and forgets tables removed
// from the publication (their keys stay until a resync).
func (s *session) pollTables(ctx context.Context) error {
	pub, err := publishedTables(ctx, s.conn, s.a.cfg.Publication)
	if err != nil {
		return err
	}
	var retained int64
	if err := s.conn.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1`, s.a.cfg.Slot).Scan(&retained); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read retained WAL of slot %s: %w", s.a.cfg.Slot, err)
	}
	s.a.update(func(st *Status) { st.RetainedWAL = retained })
	if retained > s.a.cfg.RetainedWALWarn && time.Since(s.a.walWarned) >= retainedWALWarnEvery {
		s.a.walWarned = time.Now()
		s.a.log.Warn("replication slot holds back much WAL: is the store keeping up? (bound it with max_slot_wal_keep_size)", "retained_bytes", retained)
	}
	s.pub = map[string]tableInfo{}
	for _, t := range pub {
		s.pub[t.qualified()] = t
	}
	for _, t := range pub {
		shape := s.tables[t.qualified()]
		if shape == t.shape {
			continue
		}
		if shape != "" {
			s.a.log.Info("table columns changed: copying it again", "table", t.qualified())
		}
		if err := s.copyTable(ctx, t); err != nil {
			return err
		}
	}
	for t, shape := range s.tables {
		if _, ok := s.pub[t]; !ok && shape != "" {
			s.a.log.Info("table removed from the publication: no longer mirrored; its keys stay until a resync", "table", t)
			s.tables[t] = "" // retired: the next initial sync deletes its keys
		}
	}
	return nil
}
