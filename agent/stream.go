package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// advisoryLockSpace is the first key of the agents' advisory locks
// ("LW"); the second is hashtext(slot).
const advisoryLockSpace = 0x4c57

// relError is a relation that cannot be mirrored: the error is raised
// when one of its changes must be applied.
type relError struct {
	table string
	err   error
}

// session is one connection's worth of agent work. All of it runs on one
// goroutine: the replication connection is only ever used by it.
type session struct {
	a     *Agent
	conn  *pgx.Conn      // catalog, copies, newest rows
	repl  *pgconn.PgConn // replication protocol
	rcfg  *pgconn.Config // to open replication connections for table copies
	types *pgjson.TypeMap
	lim   batchLimits

	rels    map[uint32]*relation
	relErrs map[uint32]relError // relations that cannot be mirrored
	// unmirrored are tables no longer published whose old changes were
	// seen (logged once).
	unmirrored map[string]bool
	ckpt       Checkpoint // last checkpoint the store acknowledged
	// hist is the server's history as the session found it; every
	// checkpoint it writes records its system id and timeline.
	hist serverHistory
	// standbyFlushed is how far the standbys of Config.SyncStandbys have
	// flushed, as last read.
	standbyFlushed pglogrepl.LSN
	tables         map[string]string        // copied tables → shape; stored with the next checkpoint
	pub            map[string]tableInfo     // the publication's tables at the last poll
	copiedAt       map[string]pglogrepl.LSN // tables copied while streaming → consistent point

	// fence is the checkpoint key's ModRevision as this session last read
	// or wrote it (0: absent). Every batch requires it, so a batch of an
	// agent that another agent overtook writes nothing.
	fence int64

	streaming  bool
	serverEnd  pglogrepl.LSN // the server's WAL end, as last reported
	applied    pglogrepl.LSN // everything before it is in the store (in effect)
	confirmed  pglogrepl.LSN // last position sent as flushed/applied
	startLSN   pglogrepl.LSN // where streaming started
	lastStatus time.Time
	lastIdle   time.Time     // last checkpoint written for an idle keepalive
	sentEnd    pglogrepl.LSN // the WAL end of the last keepalive between transactions
	nextPoll   time.Time

	inTxn    bool
	skipTxn  bool
	finalLSN pglogrepl.LSN
	xid      uint32
	txnTime  time.Time // commit time of the transaction being received
	rows     int
	buf      *txnBuffer

	// pipe applies the store batches (see pipeline.go); outstanding are
	// the commit times of the transactions handed to it and not yet
	// acknowledged, oldest first.
	pipe        *pipeline
	outstanding []time.Time
	// ckReserve is room kept in a batch for the checkpoint write.
	ckReserve int
	// skips are the operator's skip instructions, read at the session's
	// first change that cannot be mirrored (nil: not read yet).
	skips []Skip
}

func (a *Agent) openSession(ctx context.Context, wait bool) (*session, error) {
	cc, err := pgx.ParseConfig(a.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	rc, err := pgconn.ParseConfig(a.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	for _, p := range []map[string]string{cc.RuntimeParams, rc.RuntimeParams} {
		// pgoutput sends values in the text output of the walsender's
		// session, and to_jsonb (copies, single-key tables) formats by the
		// regular session's: both must be what to_jsonb gives with
		// TimeZone=UTC.
		for k, v := range pgjson.SessionSettings() {
			p[k] = v
		}
		if p["application_name"] == "" {
			p["application_name"] = "lenkwerk-agent"
		}
	}
	rc.RuntimeParams["replication"] = "database"
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	repl, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	// A standby is never the source: with a multi-host URL pgx skips it
	// (target_session_attrs=read-write); a URL naming it alone lands here,
	// and the agent retries until it is promoted or the URL points
	// elsewhere.
	if err := checkPrimary(ctx, conn); err != nil {
		conn.Close(context.Background())
		repl.Close(context.Background())
		return nil, err
	}
	// One agent per slot at a time, from the initial copy on: PostgreSQL
	// releases a slot between CREATE_REPLICATION_SLOT and
	// START_REPLICATION, so two agents could otherwise drop and recreate
	// it under each other and interleave their copies. The session lock
	// is held by the walsender itself, so it goes with it: when the agent
	// is killed, its backend terminated, its connection cut, or the agent
	// hangs (wal_sender_timeout ends the walsender of a consumer that does
	// not answer; an idle regular connection would stay). A standby
	// waiting for it is woken at once.
	if err := a.lock(ctx, conn, repl, wait); err != nil {
		conn.Close(context.Background())
		repl.Close(context.Background())
		return nil, err
	}
	a.update(func(st *Status) { st.Active = true })
	for _, c := range []*pgconn.PgConn{conn.PgConn(), repl} {
		if err := pgjson.CheckParameterStatus(c.ParameterStatus); err != nil {
			conn.Close(context.Background())
			repl.Close(context.Background())
			a.update(func(st *Status) { st.Active = false })
			return nil, err
		}
	}
	hist, err := identify(ctx, repl)
	if err != nil {
		conn.Close(context.Background())
		repl.Close(context.Background())
		a.update(func(st *Status) { st.Active = false })
		return nil, err
	}
	// With a multi-host URL the two connections are made apart: both must
	// have reached the same database system (best effort: the role may
	// not read pg_control_system()).
	var sysID string
	if err := conn.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sysID); err == nil && sysID != hist.SystemID {
		conn.Close(context.Background())
		repl.Close(context.Background())
		a.update(func(st *Status) { st.Active = false })
		return nil, fmt.Errorf("the query connection reached database system %s, the replication connection %s (%s): retrying", sysID, hist.SystemID, repl.Conn().RemoteAddr())
	}
	a.update(func(st *Status) { st.SystemID, st.Timeline = hist.SystemID, hist.Timeline })
	s := &session{
		hist:       hist,
		a:          a,
		conn:       conn,
		repl:       repl,
		rcfg:       rc,
		types:      pgjson.NewTypeMap(),
		lim:        a.batchLimits(),
		rels:       map[uint32]*relation{},
		relErrs:    map[uint32]relError{},
		unmirrored: map[string]bool{},
		copiedAt:   map[string]pglogrepl.LSN{},
		tables:     map[string]string{},
		pub:        map[string]tableInfo{},
		buf:        newTxnBuffer(),
	}
	s.pipe = newPipeline(s)
	s.ckReserve = checkpointReserve(a.ckptKey, nil)
	return s, nil
}

// errStandby: the server is a standby (in recovery, read-only).
var errStandby = errors.New("the database server is a read-only standby (in recovery), not the primary: retrying (name every server in a multi-host URL with target_session_attrs=read-write to find the primary)")

// checkPrimary fails with errStandby on a server in recovery.
func checkPrimary(ctx context.Context, conn *pgx.Conn) error {
	var recovery bool
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery); err != nil {
		return fmt.Errorf("check the server is the primary: %w", err)
	}
	if recovery {
		return fmt.Errorf("%s: %w", conn.PgConn().Conn().RemoteAddr(), errStandby)
	}
	return nil
}

// checkpointReserve is an upper bound of a checkpoint write's bytes.
func checkpointReserve(key string, tables map[string]string) int {
	n := len(key) + 256 // two LSNs, a time, the JSON around them
	for t, shape := range tables {
		n += len(t) + len(shape) + 8
	}
	return n
}

func (s *session) close() {
	s.pipe.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.repl.Close(ctx)
	s.conn.Close(ctx)
	s.a.update(func(st *Status) { st.Active = false; st.Streaming = false })
	s.a.mu.Lock()
	s.a.pendingSince = time.Time{}
	s.a.mu.Unlock()
}

// lock takes the slot's agent lock (advisory, session level) on the
// replication connection repl (simple queries, so the SQL carries the
// validated slot name). With wait, an agent that finds it held is a
// standby: it logs so once and blocks in pg_advisory_lock, which
// PostgreSQL grants the moment the holder's session ends. Without wait it
// fails with "slot in use".
func (a *Agent) lock(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn, wait bool) error {
	key := fmt.Sprintf("%d, hashtext('%s')", advisoryLockSpace, a.cfg.Slot) // slotName: [a-z0-9_]
	locked, err := simpleBool(ctx, repl, "SELECT pg_try_advisory_lock("+key+")")
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
			// Migration 8 leaves the agents' lock to lenkwerk_agent.
			return fmt.Errorf("take the agent lock of slot %s: %w (only lenkwerk_agent, its members and superusers may take it: run the agent as lenkwerk_agent)", a.cfg.Slot, err)
		}
		return fmt.Errorf("take the agent lock of slot %s: %w", a.cfg.Slot, err)
	}
	if locked {
		return nil
	}
	inUse := fmt.Errorf("%w: replication slot %q is used by another Lenkwerk agent (it holds the agent's advisory lock)", ErrSlotInUse, a.cfg.Slot)
	if !wait {
		return inUse
	}
	a.log.Info("replication slot is used by another consumer (a Lenkwerk agent holds its lock): standby, waiting to take over", "lock_holder_pid", lockHolder(ctx, conn, a.cfg.Slot))
	start := time.Now()
	a.update(func(st *Status) { st.Standby = true })
	defer a.update(func(st *Status) { st.Standby = false })
	a.unblock() // the active agent has the stream now
	// Wait in rounds bounded by lock_timeout (5 StandbyRetry, 5s by
	// default): each round is a round trip, so a standby whose own
	// connection died silently (a network cut) notices within a round
	// instead of blocking on a dead socket.
	round := 5 * a.cfg.StandbyRetry
	if _, err := repl.Exec(ctx, fmt.Sprintf("SET lock_timeout = '%dms'", max(round.Milliseconds(), 1))).ReadAll(); err != nil {
		return fmt.Errorf("standby: set lock_timeout: %w", err)
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*round+5*time.Second)
		_, err := repl.Exec(rctx, "SELECT pg_advisory_lock("+key+")").ReadAll()
		cancel()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable { // another round
			a.mu.Lock()
			a.stats.standbyRounds++
			a.mu.Unlock()
			continue
		}
		if err != nil {
			return fmt.Errorf("standby: wait for the agent lock of slot %s: %w", a.cfg.Slot, err)
		}
		break
	}
	if _, err := repl.Exec(ctx, "RESET lock_timeout").ReadAll(); err != nil {
		return fmt.Errorf("standby: reset lock_timeout: %w", err)
	}
	a.log.Info("taking over: got the agent lock of the slot", "waited", time.Since(start).Round(time.Millisecond))
	return nil
}

// simpleBool runs a simple query returning one boolean.
func simpleBool(ctx context.Context, c *pgconn.PgConn, sql string) (bool, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return false, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return false, fmt.Errorf("%s: unexpected result", sql)
	}
	return string(res[0].Rows[0][0]) == "t", nil
}

// lockHolder is the backend PID holding the slot's agent lock, for the log
// (0 when unknown).
func lockHolder(ctx context.Context, conn *pgx.Conn, slot string) int32 {
	var pid int32
	_ = conn.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = hashtext($2)::oid AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, advisoryLockSpace, slot).Scan(&pid)
	return pid
}

// waitSlotFree waits, holding the agent lock, until no process streams the
// slot: after a take-over the previous agent's walsender may outlive its
// lock connection a moment, or, after a network cut, until the server's
// wal_sender_timeout ends it.
func (s *session) waitSlotFree(ctx context.Context) error {
	var since time.Time
	for {
		var pid *int32
		err := s.conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, s.a.cfg.Slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && pid == nil) {
			if !since.IsZero() {
				s.a.log.Info("replication slot released", "waited", time.Since(since).Round(time.Millisecond))
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up replication slot %s: %w", s.a.cfg.Slot, err)
		}
		if since.IsZero() {
			since = time.Now()
			s.a.log.Info("waiting for the previous consumer to release the replication slot", "active_pid", *pid)
		}
		if sleep(ctx, min(s.a.cfg.StandbyRetry, 100*time.Millisecond)) {
			return ctx.Err()
		}
	}
}

// checkResume reports whether streaming can resume from ck, "", or else
// why the store must be copied again (a resync cause). The checkpoint must
// be on the server's current history: of the same database system, and
// not past where its timeline ends on the server's timeline history (a
// promoted standby or a point-in-time restore forks the history; an LSN
// of the lost branch may lie ahead of changes committed after the fork,
// which streaming from it would skip). Then the slot must exist and must
// not have been confirmed past ck (the agent confirms only what the store
// has, so a slot ahead of the store means the store lost changes, e.g. it
// was restored from a backup).
func (s *session) checkResume(ctx context.Context, ck Checkpoint) (string, error) {
	if cause, why := s.hist.verdict(ck); cause != "" {
		s.a.log.Warn("the database's history changed under the store: copying every table again", "cause", cause, "reason", why,
			"checkpoint", ck.LSN, "checkpoint_system_id", ck.SystemID, "checkpoint_timeline", ck.Timeline,
			"system_id", s.hist.SystemID, "timeline", s.hist.Timeline)
		return cause, nil
	}
	if s.a.slotWALGone {
		s.a.slotWALGone = false
		s.a.log.Warn("the replication slot cannot be streamed, the WAL it needs is gone: copying every table again", "cause", resyncSlotWALGone, "checkpoint", ck.LSN)
		return resyncSlotWALGone, nil
	}
	var plugin string
	var confirmed pglogrepl.LSN
	err := s.conn.QueryRow(ctx, `SELECT plugin::text, coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, s.a.cfg.Slot).Scan(&plugin, &confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		s.a.log.Warn("replication slot is missing: copying every table again", "cause", resyncSlotMissing, "checkpoint", ck.LSN)
		return resyncSlotMissing, nil
	}
	if err != nil {
		return "", fmt.Errorf("look up replication slot %s: %w", s.a.cfg.Slot, err)
	}
	if plugin != "pgoutput" {
		return "", fmt.Errorf("replication slot %s uses plugin %s, not pgoutput", s.a.cfg.Slot, plugin)
	}
	if confirmed > ck.LSN {
		s.a.log.Warn("store checkpoint is behind the replication slot (store restored or replaced?): copying every table again", "cause", resyncSlotAhead, "checkpoint", ck.LSN, "slot_confirmed", confirmed)
		return resyncSlotAhead, nil
	}
	if ck.Timeline != 0 && ck.Timeline != s.hist.Timeline {
		end, _ := s.hist.end(ck.Timeline)
		s.a.log.Info("the database changed timeline; the checkpoint is on its history: streaming on", "checkpoint", ck.LSN,
			"checkpoint_timeline", ck.Timeline, "timeline", s.hist.Timeline, "timeline_switch", end)
	}
	return "", nil
}

// setCheckpoint makes ck, which the store holds, the session's position.
func (s *session) setCheckpoint(ck Checkpoint) {
	s.ckpt = ck
	s.tables = maps.Clone(ck.Tables)
	s.ckReserve = checkpointReserve(s.a.ckptKey, s.tables)
	s.confirmed = max(s.confirmed, ck.LSN)
	s.a.checkpointed(ck.LSN)
}

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
	s.startLSN = s.ckpt.LSN
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
		if !s.inTxn && !time.Now().Before(s.nextPoll) {
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
		if !s.inTxn && s.nextPoll.Before(deadline) {
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
	if s.inTxn {
		s.a.log.Info("stopping: abandoning the transaction in flight; it is replayed on restart", "xid", s.xid, "commit_lsn", s.finalLSN)
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
	if s.a.testNoConfirm {
		pos = s.startLSN
	}
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
		if !s.inTxn {
			// Everything before ServerWALEnd has been sent.
			s.sentEnd = max(s.sentEnd, pkm.ServerWALEnd)
			s.checkCaughtUp()
		}
		s.setServerEnd(pkm.ServerWALEnd)
		// Between transactions everything before ServerWALEnd has been
		// sent and applied: advancing there lets an idle slot release WAL
		// and lets a shutting-down server finish. Inside a transaction it
		// would confirm changes not yet applied.
		if !s.inTxn && pkm.ServerWALEnd > s.ckpt.LSN && (pkm.ReplyRequested || time.Since(s.lastIdle) >= s.a.cfg.StatusInterval) {
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
	if s.inTxn || s.sentEnd == 0 || !s.pipe.idle() {
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
	actx, cancel := context.WithTimeout(ctx, min(s.a.cfg.ApplyTimeout, 2*time.Second))
	t := time.Now()
	rev, err := s.a.cfg.Store.Apply(actx, []kvdriver.Op{kvdriver.Require(s.a.ckptKey, s.fence), kvdriver.Put(s.a.ckptKey, ck.value())})
	s.a.met.storeWrite.Observe(time.Since(t).Seconds())
	cancel()
	s.a.update(func(st *Status) { st.StoreErr = err })
	s.lastIdle = time.Now()
	if errors.Is(err, kvdriver.ErrConflict) {
		return s.fenced(err)
	}
	if err == nil {
		s.fence = rev
	}
	if err != nil {
		if urgent && ctx.Err() == nil {
			return fmt.Errorf("the server asks to confirm %s (stopping?) and the store cannot take the checkpoint; releasing the slot: %w", lsn, err)
		}
		s.a.log.Debug("write idle checkpoint", "lsn", lsn, "err", err)
		return nil
	}
	s.setCheckpoint(ck)
	s.sendStatus()
	return nil
}

func (s *session) handleMessage(ctx context.Context, m pglogrepl.Message) error {
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		return s.onRelation(ctx, m)
	case *pglogrepl.BeginMessage:
		if s.inTxn {
			return fmt.Errorf("replication stream: BEGIN of xid %d inside xid %d", m.Xid, s.xid)
		}
		s.inTxn, s.finalLSN, s.xid, s.rows, s.txnTime = true, m.FinalLSN, m.Xid, 0, m.CommitTime
		// Dedupe per transaction, never per row (rows of one statement can
		// share an LSN): a transaction whose commit record starts before
		// the checkpoint ends at or before it, so the store has it. (The
		// pipeline may hold newer transactions than s.ckpt: those end
		// before this one begins, so the comparison is the same.)
		s.skipTxn = m.FinalLSN < s.ckpt.LSN
		s.buf.reset()
		s.updatePending()
		return nil
	case *pglogrepl.CommitMessage:
		if !s.inTxn {
			return fmt.Errorf("replication stream: COMMIT %s without BEGIN", m.CommitLSN)
		}
		err := s.commit(ctx, m)
		s.inTxn = false
		s.buf.reset()
		if err == nil {
			s.updatePending()
		}
		return err
	case *pglogrepl.InsertMessage:
		r, skip, err := s.relFor(ctx, m.RelationID)
		if err != nil || skip {
			return err
		}
		return s.onInsert(ctx, r, m)
	case *pglogrepl.UpdateMessage:
		r, skip, err := s.relFor(ctx, m.RelationID)
		if err != nil || skip {
			return err
		}
		return s.onUpdate(ctx, r, m)
	case *pglogrepl.DeleteMessage:
		r, skip, err := s.relFor(ctx, m.RelationID)
		if err != nil || skip {
			return err
		}
		return s.onDelete(ctx, r, m)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			r, skip, err := s.relFor(ctx, id)
			if err != nil {
				return err
			}
			if !skip {
				if err := s.onTruncate(ctx, r); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// onRelation caches a relation's new shape. A relation that cannot be
// mirrored is remembered as an error, raised only when one of its changes
// must be applied.
func (s *session) onRelation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	name := m.Namespace + "." + m.RelationName
	if old := s.rels[m.RelationID]; old != nil && !slices.Equal(old.cols, pgjson.ColumnsOf(m)) {
		// Columns changed: every row's to_jsonb did; poll (and copy the
		// table again) at the next transaction boundary.
		s.nextPoll = time.Now()
	}
	delete(s.rels, m.RelationID)
	delete(s.relErrs, m.RelationID)
	info, err := loadTableInfo(ctx, s.conn, tableInfo{schema: m.Namespace, name: m.RelationName})
	if err != nil && !errors.Is(err, errNoTable) {
		return err
	}
	// The relation may have changed because a type did (ALTER TYPE):
	// read the types again.
	s.types.Invalidate()
	cols := pgjson.ColumnsOf(m)
	if err := pgjson.CheckColumns(ctx, s.conn, m.RelationID, cols); err != nil {
		if errors.Is(err, pgjson.ErrGeneratedColumn) {
			s.relErrs[m.RelationID] = relError{name, err}
			return nil
		}
		return err
	}
	enc, err := s.types.Encoder(ctx, s.conn, cols)
	if err != nil {
		s.relErrs[m.RelationID] = relError{name, fmt.Errorf("table %s: %w", name, err)}
		return nil
	}
	r, err := newRelation(s.a.mapper, m, info, enc)
	if err != nil {
		s.relErrs[m.RelationID] = relError{name, err}
		return nil
	}
	s.rels[m.RelationID] = r
	return nil
}

// relFor returns the relation of a change; skip is true when the change is
// already in the store because the table was copied from a snapshot taken
// after this transaction committed. A table the agent has not copied yet
// (added to the publication) is copied first.
func (s *session) relFor(ctx context.Context, id uint32) (r *relation, skip bool, err error) {
	if s.skipTxn {
		return nil, true, nil
	}
	r = s.rels[id]
	bad, isBad := s.relErrs[id]
	if r == nil && !isBad {
		return nil, false, fmt.Errorf("replication stream: change for relation %d without a Relation message", id)
	}
	name := bad.table
	if r != nil {
		name = r.qualified
	}
	if s.tables[name] == "" {
		// Added to the publication since the last poll? (A copy must
		// follow the batches in flight.)
		if err := s.sync(ctx); err != nil {
			return nil, false, err
		}
		if err := s.pollTables(ctx); err != nil {
			return nil, false, err
		}
		if s.tables[name] == "" {
			// No longer published (removed or dropped since this
			// transaction): not mirrored any more, like every table
			// removed from the publication.
			if !s.unmirrored[name] {
				s.unmirrored[name] = true
				s.a.log.Info("changes of a table no longer published are not mirrored", "table", name)
			}
			return nil, true, nil
		}
	}
	if isBad {
		if err := s.rowError(ctx, name, "", s.finalLSN, bad.err); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	if c, ok := s.copiedAt[r.qualified]; ok && s.finalLSN < c {
		return r, true, nil
	}
	s.rows++
	return r, false, nil
}

func (s *session) onInsert(ctx context.Context, r *relation, m *pglogrepl.InsertMessage) error {
	if r.tmpl.Singleton() {
		s.buf.markNewest(r)
		return nil
	}
	vals, err := r.values(m.Tuple, nil)
	if err != nil {
		return err
	}
	return s.putRow(ctx, r, vals)
}

func (s *session) onUpdate(ctx context.Context, r *relation, m *pglogrepl.UpdateMessage) error {
	if r.tmpl.Singleton() {
		s.buf.markNewest(r)
		return nil
	}
	vals, err := r.values(m.NewTuple, m.OldTuple)
	if err != nil {
		return err
	}
	if m.OldTuple != nil {
		// The old row comes with REPLICA IDENTITY FULL, or when the
		// identity columns changed: the key may have moved.
		newKey, err := r.key(s.types, vals)
		if err != nil {
			return s.rowError(ctx, r.qualified, "", s.finalLSN, err)
		}
		oldKey, err := r.oldKey(s.types, m.OldTuple, vals)
		switch {
		case err != nil:
			// Skipped, the old row had no key in the store to delete.
			if err := s.rowError(ctx, r.qualified, "", s.finalLSN, err); err != nil {
				return err
			}
		case oldKey != newKey:
			s.buf.del(oldKey)
		}
	}
	return s.putRow(ctx, r, vals)
}

func (s *session) putRow(ctx context.Context, r *relation, vals [][]byte) error {
	key, err := r.key(s.types, vals)
	if err != nil {
		return s.rowError(ctx, r.qualified, "", s.finalLSN, err)
	}
	val, err := r.enc.AppendRow(nil, vals)
	if err == nil {
		err = s.validateEncoded(key, val)
	}
	if err != nil {
		return s.rowError(ctx, r.qualified, key, s.finalLSN, err) // nil: skipped
	}
	s.buf.put(key, val)
	return s.maybeFlush(ctx)
}

func (s *session) onDelete(ctx context.Context, r *relation, m *pglogrepl.DeleteMessage) error {
	if r.tmpl.Singleton() {
		s.buf.markNewest(r)
		return nil
	}
	if m.OldTuple == nil {
		return fmt.Errorf("table %s: delete without the old row's key", r.qualified)
	}
	key, err := r.oldKey(s.types, m.OldTuple, nil)
	if err != nil {
		return s.rowError(ctx, r.qualified, "", s.finalLSN, err) // nil: skipped
	}
	s.buf.del(key)
	return s.maybeFlush(ctx)
}

// onTruncate deletes every key of the table: those the store has (listed
// by the template's prefix and matched against its shape, since
// "/Index/{id}" and "/Index/{index_id}/{id}" share a prefix) and those the
// transaction wrote so far.
func (s *session) onTruncate(ctx context.Context, r *relation) error {
	if r.tmpl.Singleton() {
		s.buf.markNewest(r)
		return nil
	}
	for _, op := range slices.Clone(s.buf.ops) {
		if ours(r.tmpl.Match, s.a.cfg.Prefix, op.Key) {
			s.buf.del(op.Key)
		}
	}
	// The listing must see the keys of every batch handed over.
	if err := s.sync(ctx); err != nil {
		return err
	}
	kvs, err := s.list(ctx, r.tmpl.ListPrefix())
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		if ours(r.tmpl.Match, s.a.cfg.Prefix, kv.Key) {
			s.buf.del(kv.Key)
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
	if n := len(s.buf.ops); n > s.a.stats.maxBuffered {
		s.a.mu.Lock()
		s.a.stats.maxBuffered = n
		s.a.mu.Unlock()
	}
	if len(s.buf.ops) < s.lim.ops && s.buf.bytes < s.lim.bytes {
		return nil
	}
	return s.applyAll(ctx, s.buf.take(), false)
}

// commit resolves single-key tables, then hands the rest of the
// transaction to the pipeline with the checkpoint (its commit end LSN) in
// the last batch; the checkpoint moves and the position is confirmed when
// the store has acknowledged it (reap).
func (s *session) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	if s.skipTxn {
		s.a.log.Debug("transaction already in the store: skipped", "xid", s.xid, "commit_lsn", m.CommitLSN, "end_lsn", m.TransactionEndLSN)
		return nil
	}
	for _, r := range s.buf.newest {
		if err := s.resolveNewest(ctx, r); err != nil {
			return err
		}
	}
	if err := s.waitStandbys(ctx, m.TransactionEndLSN); err != nil {
		return err
	}
	ck := &Checkpoint{LSN: m.TransactionEndLSN, CommitLSN: m.CommitLSN, Time: m.CommitTime.UTC(), Tables: maps.Clone(s.tables), SystemID: s.hist.SystemID, Timeline: s.hist.Timeline}
	txn := &commitInfo{xid: s.xid, commitLSN: m.CommitLSN, endLSN: m.TransactionEndLSN, time: m.CommitTime, rows: s.rows}
	s.outstanding = append(s.outstanding, m.CommitTime)
	if err := s.submit(ctx, s.buf.take(), nil, ck, ck, txn); err != nil {
		return fmt.Errorf("apply transaction %d (commit %s): %w", s.xid, m.CommitLSN, err)
	}
	return nil
}

// resolveNewest sets a single-key table's key (/Servermap) to its newest
// row, read from the database in a snapshot that sees the transaction
// being applied (s.xid). The snapshot may also see later transactions; the
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
		if err := s.conn.QueryRow(ctx, q, int64(s.xid)).Scan(&visible, &v); err != nil {
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
				s.a.log.Warn("waiting for a committed transaction to become visible to read a single-key table", "table", r.qualified, "xid", s.xid, "commit_lsn", s.finalLSN)
			}
		}
		s.keepalive() // long waits: wal_sender_timeout
		if sleep(ctx, pause) {
			return ctx.Err()
		}
	}
	if v == nil {
		s.buf.del(key)
		return nil
	}
	if err := s.validatePut(key, []byte(*v)); err != nil {
		return s.rowError(ctx, r.qualified, key, s.finalLSN, err) // nil: skipped
	}
	s.buf.put(key, []byte(*v))
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
		return fmt.Errorf("transaction %d is committed but not visible after %s, and the agent is a synchronous standby (pg_stat_replication.sync_state %s): commits wait for the agent, which waits for them to read a single-key table; take the agent's application_name out of synchronous_standby_names", s.xid, "2s", state)
	}
	return nil
}
