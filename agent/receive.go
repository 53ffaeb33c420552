package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync/atomic"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// stream runs START_REPLICATION from the checkpoint and applies
// transactions until ctx is done (then it returns nil) or a failure.
func (s *session) stream(ctx context.Context) error {
	err := pglogrepl.StartReplication(ctx, s.repl, s.a.cfg.Slot, s.ckpt.LSN, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + s.a.cfg.Publication + "'"},
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("start replication from %s: %w", s.ckpt.LSN, err)
	}
	s.streaming = true
	s.a.update(func(st *Status) { st.Streaming = true; st.Err = nil })
	lvl := slog.LevelInfo
	if s.a.Status().Blocked != nil {
		lvl = slog.LevelDebug // retrying the change it is blocked on: logged by Run
	}
	s.a.log.Log(ctx, lvl, "streaming", "from", s.ckpt.LSN)
	s.sendStatus()
	s.lastIdle = time.Now()
	// Tables may have been added to the publication while the agent was
	// down: look right away.
	s.nextPoll = time.Now()
	for {
		if ctx.Err() != nil {
			return s.shutdown()
		}
		if err := s.reap(); err != nil {
			if ctx.Err() != nil {
				return s.shutdown()
			}
			return err
		}
		if !s.dec.inTxn && !time.Now().Before(s.nextPoll) {
			// A copy writes what the store must not get older values
			// for from batches still in flight.
			err := s.sync(ctx)
			if err == nil {
				err = s.pollTables(ctx)
			}
			if err != nil {
				if ctx.Err() != nil {
					return s.shutdown()
				}
				return err
			}
			s.nextPoll = time.Now().Add(s.a.cfg.PollInterval)
		}
		deadline := s.lastStatus.Add(s.a.cfg.StatusInterval)
		if !s.dec.inTxn && s.nextPoll.Before(deadline) {
			deadline = s.nextPoll
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		var woken atomic.Bool
		s.pipe.setWake(func() { woken.Store(true); cancel() })
		msg, err := s.repl.ReceiveMessage(rctx)
		s.pipe.setWake(nil)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return s.shutdown()
			}
			// Woken by the applier, or the status update is due: the
			// connection stays usable (pgconn only sets a deadline).
			// Any other error, a timeout before the deadline included
			// (ETIMEDOUT of a connection the network lost counts as a
			// timeout, and the loop would spin on it), ends the session.
			if woken.Load() || (pgconn.Timeout(err) && !time.Now().Before(deadline)) {
				s.keepalive()
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				if ctx.Err() != nil {
					return s.shutdown()
				}
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream: ended by the server")
		}
	}
}

// setServerEnd records the server's WAL end and the lag in bytes.
func (s *session) setServerEnd(end pglogrepl.LSN) {
	s.serverEnd = max(s.serverEnd, end)
	s.applied = max(s.applied, s.ckpt.LSN)
	lag := int64(0)
	if s.serverEnd > s.applied {
		lag = int64(s.serverEnd - s.applied)
	}
	s.a.update(func(st *Status) { st.LagBytes = lag })
}

// shutdown abandons a transaction in flight (it is replayed after the
// restart: the checkpoint has not passed it) and confirms what the store has.
func (s *session) shutdown() error {
	_ = s.reap() // what the store has is confirmed below
	if s.dec.inTxn {
		s.a.log.Info("stopping: abandoning the transaction in flight; it is replayed on restart", "xid", s.dec.xid, "commit_lsn", s.dec.finalLSN)
	}
	s.sendStatus()
	s.a.log.Info("stopped", "checkpoint", s.ckpt.LSN)
	return nil
}

// sendStatus confirms s.confirmed as written, flushed and applied, every
// field set explicitly: pglogrepl would copy the write position into zero
// fields, and a confirmed position tells PostgreSQL it may discard the WAL.
func (s *session) sendStatus() {
	if !s.streaming {
		return
	}
	pos := s.confirmed
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.repl, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos,
		WALFlushPosition: pos,
		WALApplyPosition: pos,
		ClientTime:       time.Now(),
	})
	s.lastStatus = time.Now()
	if err != nil {
		// The receive loop sees the broken connection.
		s.a.log.Debug("send standby status update", "err", err)
		return
	}
	s.a.update(func(st *Status) { st.Confirmed = pos })
}

// keepalive sends a status update when one is due, also during long store
// writes and outages, so wal_sender_timeout does not end the stream.
func (s *session) keepalive() {
	if s.streaming && time.Since(s.lastStatus) >= s.a.cfg.StatusInterval {
		s.sendStatus()
	}
}

func (s *session) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		if !s.dec.inTxn {
			// Everything before ServerWALEnd has been sent.
			s.sentEnd = max(s.sentEnd, pkm.ServerWALEnd)
			s.checkCaughtUp()
		}
		s.setServerEnd(pkm.ServerWALEnd)
		// Between transactions everything before ServerWALEnd has been
		// sent and applied: advancing there lets an idle slot release WAL
		// and lets a shutting-down server finish. Inside a transaction it
		// would confirm changes not yet applied.
		if !s.dec.inTxn && pkm.ServerWALEnd > s.ckpt.LSN && (pkm.ReplyRequested || time.Since(s.lastIdle) >= s.a.cfg.StatusInterval) {
			if err := s.advanceIdle(ctx, pkm.ServerWALEnd, pkm.ReplyRequested); err != nil {
				return err
			}
		}
		if pkm.ReplyRequested {
			s.sendStatus()
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		s.setServerEnd(xld.ServerWALEnd)
		m, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("parse pgoutput message at %s: %w", xld.WALStart, err)
		}
		return s.handleMessage(ctx, m)
	}
	return nil
}

// checkCaughtUp: between transactions, with nothing in flight, the store
// has everything the server had sent by its last keepalive. (The keepalive
// may come while batches are still in flight; the walsender sends the
// next one only much later once the position is confirmed, so the
// pipeline's drain must count too.)
func (s *session) checkCaughtUp() {
	if s.dec.inTxn || s.sentEnd == 0 || !s.pipe.idle() {
		return
	}
	s.applied = max(s.applied, s.sentEnd)
	if s.sentEnd >= s.ckpt.LSN {
		s.a.mu.Lock()
		s.a.lastLag = 0
		s.a.mu.Unlock()
	}
}

// advanceIdle records an idle keepalive position: first in the store, so
// the slot is never confirmed past the store's checkpoint (a slot ahead of
// the store then reliably means the store lost data), then to PostgreSQL.
// It is one short attempt: a store that cannot take it now is asked again
// at a later keepalive; but when the server asks for the reply (a stopping
// server waits for its walsender, which waits for this confirmation) the
// session ends instead, which lets the walsender go at once: the store may
// be on that very server.
func (s *session) advanceIdle(ctx context.Context, lsn pglogrepl.LSN, urgent bool) error {
	// The checkpoint must follow every batch handed over before.
	if err := s.sync(ctx); err != nil {
		return err
	}
	if len(s.a.cfg.SyncStandbys) > 0 {
		// Nor past what the standbys have: after a failover to one of
		// them the checkpoint must still be on the history.
		flushed, _, err := s.standbysFlushed(ctx, s.a.cfg.SyncStandbys)
		if err != nil {
			return err
		}
		s.standbyFlushed = flushed
		if flushed < lsn {
			if urgent {
				return fmt.Errorf("the server asks to confirm %s (stopping?) and the standbys of --sync-standbys have flushed only %s; releasing the slot", lsn, flushed)
			}
			lsn = flushed
		}
		if lsn <= s.ckpt.LSN {
			return nil
		}
	}
	ck := Checkpoint{LSN: lsn, Time: time.Now().UTC(), Tables: maps.Clone(s.tables), SystemID: s.hist.SystemID, Timeline: s.hist.Timeline}
	// The pipeline is drained: the session goroutine writes.
	err := s.w.try(ctx, []kvdriver.Op{kvdriver.Put(s.a.ckptKey, ck.value())}, min(s.a.cfg.ApplyTimeout, 2*time.Second))
	s.lastIdle = time.Now()
	if errors.Is(err, kvdriver.ErrConflict) {
		return s.w.fenced(err)
	}
	if err != nil {
		if urgent && ctx.Err() == nil {
			return fmt.Errorf("the server asks to confirm %s (stopping?) and the store cannot take the checkpoint; releasing the slot: %w", lsn, err)
		}
		s.a.log.Debug("write idle checkpoint", "lsn", lsn, "err", err)
		return nil
	}
	s.setCheckpoint(ck)
	// The store now has all the server had sent: the lag is zero until
	// the next message, not what the keepalive showed before the write
	// (the walsender may send none for wal_sender_timeout/2).
	s.setServerEnd(lsn)
	s.sendStatus()
	return nil
}
