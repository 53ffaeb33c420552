package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// Causes of a full resync (label cause of lenkwerk_agent_resyncs_total).
const (
	// resyncNoCheckpoint: the store has no checkpoint (new or wiped).
	resyncNoCheckpoint = "no_checkpoint"
	// resyncSlotMissing: the slot is gone (a promoted standby without a
	// copy of it, a restore, a dropped slot).
	resyncSlotMissing = "slot_missing"
	// resyncUndecodable: streaming failed on a slot PostgreSQL cannot
	// decode (could not map filenode); it is replaced.
	resyncUndecodable = "slot_undecodable"
	// resyncSlotWALGone: the server could not stream the slot, the WAL it
	// needs being gone (a slot copied to a standby that did not keep it).
	resyncSlotWALGone = "slot_wal_removed"
	// resyncSlotInvalidated: the server invalidated the slot (wal_status
	// lost), as it does to a slot retaining more WAL than
	// max_slot_wal_keep_size; it is replaced.
	resyncSlotInvalidated = "slot_invalidated"
	// resyncSlotAhead: the slot was confirmed past the checkpoint, so the
	// store lost changes (store restored or replaced).
	resyncSlotAhead = "slot_ahead"
	// resyncOtherSystem: the checkpoint was taken on another database
	// cluster (system identifier).
	resyncOtherSystem = "other_system"
	// resyncHistoryDiverged: the checkpoint is not on the server's
	// current history (a promotion or point-in-time restore cut it off).
	resyncHistoryDiverged = "history_diverged"
)

// resyncCauses are every cause, so the metric shows zeros before the first.
var resyncCauses = []string{resyncNoCheckpoint, resyncSlotMissing, resyncUndecodable, resyncSlotWALGone, resyncSlotInvalidated, resyncSlotAhead, resyncOtherSystem, resyncHistoryDiverged}

// serverHistory is what IDENTIFY_SYSTEM and TIMELINE_HISTORY say about the
// server's history: its cluster, its timeline, its WAL end and, for a
// timeline above 1, where each ancestor timeline ended.
type serverHistory struct {
	SystemID string
	Timeline int32
	XLogPos  pglogrepl.LSN
	// Ends maps each ancestor timeline to the LSN where the server's
	// history left it (the switch point); the current timeline has none.
	Ends map[int32]pglogrepl.LSN
	// HistoryErr is why the timeline history could not be read (Ends is
	// then empty).
	HistoryErr error
}

// identify runs IDENTIFY_SYSTEM, and TIMELINE_HISTORY when the timeline is
// above 1, on the replication connection.
func identify(ctx context.Context, repl *pgconn.PgConn) (serverHistory, error) {
	id, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return serverHistory{}, fmt.Errorf("identify system: %w", err)
	}
	h := serverHistory{SystemID: id.SystemID, Timeline: id.Timeline, XLogPos: id.XLogPos, Ends: map[int32]pglogrepl.LSN{}}
	if id.Timeline > 1 {
		res, err := pglogrepl.TimelineHistory(ctx, repl, id.Timeline)
		if err == nil {
			h.Ends, err = parseTimelineHistory(res.Content)
		}
		if err != nil {
			if ctx.Err() != nil || repl.IsClosed() {
				return serverHistory{}, fmt.Errorf("timeline history of timeline %d: %w", id.Timeline, err)
			}
			// Without the history no earlier timeline is known to be on
			// it: a checkpoint of another timeline leads to a copy, which
			// is safe, where failing would retry for ever.
			h.Ends, h.HistoryErr = map[int32]pglogrepl.LSN{}, err
		}
	}
	return h, nil
}

// parseTimelineHistory reads a timeline history file: per line an
// ancestor timeline, the LSN where it ended and a free-text reason; '#'
// starts a comment. The content comes from the server: malformed lines
// are an error, not skipped.
func parseTimelineHistory(content []byte) (map[int32]pglogrepl.LSN, error) {
	ends := map[int32]pglogrepl.LSN{}
	sc := bufio.NewScanner(bytes.NewReader(content))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want timeline and switch point, got %q", n, line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 31)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("line %d: invalid timeline %q", n, f[0])
		}
		end, err := pglogrepl.ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: invalid switch point %q: %w", n, f[1], err)
		}
		ends[int32(tli)] = end
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return ends, nil
}

// end is where timeline tli ends on the server's history: infinite for
// the current timeline; ok is false when tli is not on it at all.
func (h serverHistory) end(tli int32) (pglogrepl.LSN, bool) {
	if tli == h.Timeline {
		return pglogrepl.LSN(math.MaxUint64), true
	}
	e, ok := h.Ends[tli]
	return e, ok
}

// verdict decides whether streaming may resume from ck on this server. It
// returns "" to resume, else the resync cause and why, in words. A
// checkpoint without system id and timeline (written by an agent that did
// not record them) has nothing to check and resumes; the session writes
// them from then on.
func (h serverHistory) verdict(ck Checkpoint) (cause, why string) {
	if ck.SystemID == "" {
		return "", ""
	}
	if ck.SystemID != h.SystemID {
		return resyncOtherSystem, fmt.Sprintf("the checkpoint is of database system %s, the server is %s", ck.SystemID, h.SystemID)
	}
	if ck.Timeline == 0 {
		return "", ""
	}
	end, ok := h.end(ck.Timeline)
	switch {
	case !ok && h.HistoryErr != nil:
		return resyncHistoryDiverged, fmt.Sprintf("the checkpoint's timeline %d is not the server's (%d), whose timeline history cannot be read: %v", ck.Timeline, h.Timeline, h.HistoryErr)
	case !ok:
		return resyncHistoryDiverged, fmt.Sprintf("the checkpoint's timeline %d is not on the server's history (timeline %d)", ck.Timeline, h.Timeline)
	case ck.LSN > end:
		return resyncHistoryDiverged, fmt.Sprintf("the checkpoint %s is past where timeline %d ends on the server's history (%s, now timeline %d): the database lost changes the store has", ck.LSN, ck.Timeline, end, h.Timeline)
	case ck.LSN > h.XLogPos:
		// Same history by number, but the server has not got that far:
		// restored from a backup without a new timeline.
		return resyncHistoryDiverged, fmt.Sprintf("the checkpoint %s is past the server's WAL end %s (restored from a backup?)", ck.LSN, h.XLogPos)
	}
	return "", ""
}
