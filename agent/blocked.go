package agent

import (
	"context"
	"time"

	"github.com/jackc/pglogrepl"
)

// blockedRepeat is how often the log repeats, in one short line, that the
// agent is still blocked on the same change.
const blockedRepeat = time.Minute

// blocked records that a session ended on a change the agent cannot mirror
// (Status.Blocked: /readyz, the role metric, the lag) and logs it: the
// whole error and the way out the first time, then a short line at most
// every blockedRepeat, whatever the retry rate.
func (a *Agent) blocked(ve *ValueError, retry time.Duration) {
	now := time.Now()
	a.mu.Lock()
	first := !ve.same(a.status.Blocked)
	if first {
		a.status.Blocked, a.status.BlockedSince = ve, now
		a.blockedLogged = now
		// Cleared once the checkpoint passes the change's transaction
		// (or, for a table copy, the checkpoint of the time).
		a.blockedUntil = max(ve.CommitLSN, a.status.Checkpoint)
	}
	repeat := !first && now.Sub(a.blockedLogged) >= blockedRepeat
	if repeat {
		a.blockedLogged = now
	}
	since := a.status.BlockedSince
	a.mu.Unlock()
	way := ve.WayOut(a.cfg.Slot, a.cfg.Prefix)
	switch {
	case first:
		a.log.Error("a change cannot be mirrored: the agent retries it and mirrors nothing after it until it is skipped",
			"table", ve.Table, "key", ShortKey(ve.Key), "commit_lsn", ve.CommitLSN, "err", ve.Err,
			"way_out", way+" (the store keeps the key's previous value; fix or delete the row at the source)", "retry_in", retry)
	case repeat:
		a.log.Error("still blocked on a change that cannot be mirrored", "table", ve.Table, "key", ShortKey(ve.Key),
			"commit_lsn", ve.CommitLSN, "since", since.Round(time.Second), "way_out", way)
	}
}

// checkpointed records the store's checkpoint; one past the change the
// agent was blocked on ends the block.
func (a *Agent) checkpointed(lsn pglogrepl.LSN) {
	a.mu.Lock()
	a.status.Checkpoint = lsn
	b := a.status.Blocked
	if b == nil || lsn <= a.blockedUntil {
		a.mu.Unlock()
		return
	}
	since := a.status.BlockedSince
	a.status.Blocked, a.status.BlockedSince = nil, time.Time{}
	a.mu.Unlock()
	a.log.Info("mirroring again: past the change that could not be mirrored", "table", b.Table, "key", ShortKey(b.Key),
		"commit_lsn", b.CommitLSN, "blocked_for", time.Since(since).Round(time.Millisecond))
}

// unblock forgets a block (another agent streams the slot now).
func (a *Agent) unblock() {
	a.update(func(st *Status) { st.Blocked, st.BlockedSince = nil, time.Time{} })
}

// pause waits d before the next session. Blocked on ve, it comes back as
// soon as an instruction to skip that change is in the store.
func (a *Agent) pause(ctx context.Context, d time.Duration, ve *ValueError) (done bool) {
	if ve == nil {
		return sleep(ctx, d)
	}
	key := SkipKey(a.cfg.Prefix, a.cfg.Slot)
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left <= 0 {
			return false
		}
		if sleep(ctx, min(left, time.Second)) {
			return true
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ApplyTimeout)
		list, _, err := readSkips(rctx, a.cfg.Store, key)
		cancel()
		for _, sk := range list {
			if err == nil && sk.matches(ve) {
				return false
			}
		}
	}
}

// refreshLag sets Status.LagBytes from the server's WAL position at the
// start of a session, so the gauge moves while the agent retries (a
// blocked agent fails before the stream would report it).
func (s *session) refreshLag(ctx context.Context) {
	var cur pglogrepl.LSN
	if err := s.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&cur); err != nil {
		s.a.log.Debug("read the server's WAL position", "err", err)
		return
	}
	s.setServerEnd(cur)
}

// Roles of the lenkwerk_agent_role metric.
const (
	roleActive  = "active"  // holds the slot's lock and mirrors
	roleStandby = "standby" // waits while another agent holds the lock
	roleBlocked = "blocked" // retries a change it cannot mirror (Status.Blocked)
	roleDown    = "down"    // neither: connecting, or retrying after a failure
)

var roles = []string{roleActive, roleStandby, roleBlocked, roleDown}

func (st Status) role() string {
	switch {
	case st.Standby:
		return roleStandby
	case st.Blocked != nil:
		return roleBlocked
	case st.Active:
		return roleActive
	}
	return roleDown
}
