package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
)

// The session's side of decoding (see decoder): what a message needs from
// the server or the store before or after the decoder turns it into store
// operations, and handing those to the pipeline.

func (s *session) handleMessage(ctx context.Context, m pglogrepl.Message) error {
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		return s.onRelation(ctx, m)
	case *pglogrepl.BeginMessage:
		if err := s.dec.begin(m, s.ckpt.LSN); err != nil {
			return err
		}
		s.updatePending()
		return nil
	case *pglogrepl.CommitMessage:
		txn, err := s.dec.commit(m)
		if err != nil {
			return err
		}
		err = s.commit(ctx, m, txn)
		s.dec.end()
		if err == nil {
			s.updatePending()
		}
		return err
	case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage:
		if err := s.dec.change(ctx, m); err != nil {
			return err
		}
		return s.maybeFlush(ctx)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			r, err := s.dec.truncate(ctx, id)
			if err != nil {
				return err
			}
			if r != nil {
				if err := s.truncateStored(ctx, r); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// onRelation reads what a Relation message needs from the catalog (the
// table's keys, its types) and hands it to the decoder. A relation that
// cannot be mirrored is remembered as an error, raised only when one of
// its changes must be applied.
func (s *session) onRelation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	name := m.Namespace + "." + m.RelationName
	info, err := loadTableInfo(ctx, s.conn, tableInfo{schema: m.Namespace, name: m.RelationName})
	if err != nil && !errors.Is(err, errNoTable) {
		return err
	}
	// The relation may have changed because a type did (ALTER TYPE):
	// read the types again.
	s.types.Invalidate()
	cols := pgjson.ColumnsOf(m)
	var prepErr error
	if err := pgjson.CheckColumns(ctx, s.conn, m.RelationID, cols); err != nil {
		if !errors.Is(err, pgjson.ErrGeneratedColumn) {
			return err
		}
		prepErr = err
	} else {
		oids := make([]uint32, len(cols))
		for i, c := range cols {
			oids[i] = c.TypeOID
		}
		if err := s.types.Load(ctx, s.conn, oids...); err != nil {
			prepErr = fmt.Errorf("table %s: %w", name, err)
		}
	}
	if s.dec.relation(m, info, prepErr) {
		// Columns changed: every row's to_jsonb did; poll (and copy the
		// table again) at the next transaction boundary.
		s.nextPoll = time.Now()
	}
	return nil
}

// truncateStored deletes the keys of a truncated table that the store has.
// The listing must see the keys of every batch handed over.
func (s *session) truncateStored(ctx context.Context, r *relation) error {
	if err := s.sync(ctx); err != nil {
		return err
	}
	kvs, err := s.list(ctx, r.tmpl.ListPrefix())
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		if s.dec.truncateKey(r, kv.Key) {
			if err := s.maybeFlush(ctx); err != nil {
				return err
			}
		}
	}
	return s.maybeFlush(ctx)
}

// maybeFlush applies the buffered part of a transaction when it reaches
// the batch limits: a chunk without checkpoint. A crash before the last
// chunk replays the whole transaction, which rewrites the same final values.
func (s *session) maybeFlush(ctx context.Context) error {
	if !s.dec.full() {
		return nil
	}
	s.a.met.chunks.Inc()
	return s.submit(ctx, batch{ops: s.dec.buf.take()})
}

// commit copies the tables added to the publication that the transaction
// touched, resolves single-key tables, then hands the rest of the
// transaction to the pipeline with the checkpoint (its commit end LSN) in
// the last batch; the checkpoint moves and the position is confirmed when
// the store has acknowledged it (reap). txn nil: the store has the
// transaction already.
func (s *session) commit(ctx context.Context, m *pglogrepl.CommitMessage, txn *commitInfo) error {
	if txn == nil {
		s.a.log.Debug("transaction already in the store: skipped", "xid", s.dec.xid, "commit_lsn", m.CommitLSN, "end_lsn", m.TransactionEndLSN)
		return nil
	}
	if err := s.admitTables(ctx); err != nil {
		return err
	}
	for _, r := range s.dec.buf.newest {
		if err := s.resolveNewest(ctx, r); err != nil {
			return err
		}
	}
	if err := s.waitStandbys(ctx, m.TransactionEndLSN); err != nil {
		return err
	}
	ck := &Checkpoint{LSN: m.TransactionEndLSN, CommitLSN: m.CommitLSN, Time: m.CommitTime.UTC(), Tables: maps.Clone(s.tables), SystemID: s.hist.SystemID, Timeline: s.hist.Timeline}
	s.outstanding = append(s.outstanding, m.CommitTime)
	if err := s.submit(ctx, batch{ops: s.dec.buf.take(), ck: ck, txn: txn}); err != nil {
		return fmt.Errorf("apply transaction %d (commit %s): %w", s.dec.xid, m.CommitLSN, err)
	}
	return nil
}
