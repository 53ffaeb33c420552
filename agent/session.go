package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// session is one connection's worth of agent work. All of it runs on one
// goroutine: the replication connection is only ever used by it.
type session struct {
	a     *Agent
	conn  *pgx.Conn      // catalog, copies, newest rows
	repl  *pgconn.PgConn // replication protocol
	rcfg  *pgconn.Config // to open replication connections for table copies
	types *pgjson.TypeMap
	lim   batchLimits

	// dec decodes the stream: relations, the transaction being
	// received and its buffered changes.
	dec *decoder
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
	tables         map[string]string    // copied tables → shape; stored with the next checkpoint
	pub            map[string]tableInfo // the publication's tables at the last poll

	// w writes the store, fenced (see writer).
	w *writer

	streaming  bool
	serverEnd  pglogrepl.LSN // the server's WAL end, as last reported
	applied    pglogrepl.LSN // everything before it is in the store (in effect)
	confirmed  pglogrepl.LSN // last position sent as flushed/applied
	lastStatus time.Time
	lastIdle   time.Time     // last checkpoint written for an idle keepalive
	sentEnd    pglogrepl.LSN // the WAL end of the last keepalive between transactions
	nextPoll   time.Time

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
		unmirrored: map[string]bool{},
		tables:     map[string]string{},
		pub:        map[string]tableInfo{},
	}
	s.dec = newDecoder(a.mapper, s.types, a.cfg.Prefix, s.lim)
	s.dec.mirrored = func(table string) bool { return s.tables[table] != "" }
	s.dec.skip = s.skipped
	s.w = &writer{a: a}
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
// which streaming from it would skip). Then the slot must exist, must not
// have been invalidated by the server (max_slot_wal_keep_size), and must
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
	var invalidated bool
	var keepSize string
	// PostgreSQL marks a slot it invalidated (max_slot_wal_keep_size) by
	// wal_status 'lost' and no restart_lsn; it can never be streamed
	// again (START_REPLICATION fails with object_not_in_prerequisite_state).
	// A lost slot that still has its restart_lsn is a slot copy whose WAL
	// is gone: START_REPLICATION tells (slotWALGone).
	err := s.conn.QueryRow(ctx, `SELECT plugin::text, coalesce(confirmed_flush_lsn, '0/0')::text,
		coalesce(wal_status = 'lost' AND restart_lsn IS NULL, false), current_setting('max_slot_wal_keep_size')
		FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, s.a.cfg.Slot).Scan(&plugin, &confirmed, &invalidated, &keepSize)
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
	if invalidated {
		s.a.log.Warn("replication slot was invalidated by the server (wal_status lost: it retained more WAL than max_slot_wal_keep_size while the agent was away or behind): replacing it and copying every table again; raise max_slot_wal_keep_size to avoid this",
			"cause", resyncSlotInvalidated, "checkpoint", ck.LSN, "max_slot_wal_keep_size", keepSize)
		return resyncSlotInvalidated, nil
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
