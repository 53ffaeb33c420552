// Package status reports how far the Lenkwerk agent's store is behind the
// database: the replication slot as PostgreSQL sees it, the checkpoint the
// store holds, the lag between them and the WAL the slot keeps on disk.
//
// It reads only pg_replication_slots and pg_current_wal_lsn(), which every
// role may, so it runs as lenkwerk_agent; it never touches the slot.
package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// DefaultWarnRetained is the retained WAL above which a Report warns.
const DefaultWarnRetained int64 = 1 << 30

// DefaultWarnLag is the lag above which a Report warns: a healthy agent
// writes a checkpoint at least every status interval (10s by default),
// idle or not.
const DefaultWarnLag = 30 * time.Second

// Options say what Read inspects.
type Options struct {
	// DatabaseURL is the Lenkwerk database; any role that may log in.
	DatabaseURL string
	// Store is the key-value store holding the checkpoint.
	Store *kvdriver.Store
	// Slot is the replication slot; default agent.DefaultSlot.
	Slot string
	// Prefix is the agent's key prefix ("" or "/a/b").
	Prefix string
	// WarnRetained: retained WAL above this many bytes is a warning;
	// default DefaultWarnRetained.
	WarnRetained int64
	// WarnLag: a store further behind than this is a warning (the agent
	// is stalled, blocked or slow); default DefaultWarnLag.
	WarnLag time.Duration
	// Now is the clock for the lag in seconds; default time.Now.
	Now func() time.Time
}

// Report is the state of one slot and its store. Its JSON encoding is
// what `lenkwerk status --json` prints.
type Report struct {
	Slot string `json:"slot"`
	// SlotExists is false when the server has no slot of that name; the
	// slot fields are then zero.
	SlotExists bool   `json:"slot_exists"`
	Database   string `json:"database,omitempty"`
	Plugin     string `json:"plugin,omitempty"`
	Active     bool   `json:"active"`
	// ActivePID is the walsender's process id while a consumer streams.
	ActivePID         int    `json:"active_pid,omitempty"`
	RestartLSN        string `json:"restart_lsn,omitempty"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
	CurrentWALLSN     string `json:"current_wal_lsn"`
	// SystemID and Timeline are the database's system identifier and
	// current timeline ("" and 0 when the role may not read them:
	// pg_control_system()).
	SystemID string `json:"system_id,omitempty"`
	Timeline int32  `json:"timeline,omitempty"`
	// RetainedWALBytes is pg_current_wal_lsn() - restart_lsn: WAL the
	// server keeps for the slot.
	RetainedWALBytes int64 `json:"retained_wal_bytes"`
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved or lost (the slot is unusable).
	WALStatus string `json:"wal_status,omitempty"`
	// SafeWALSize is how much more WAL may be written before the slot is
	// lost; nil when max_slot_wal_keep_size is unlimited (-1).
	SafeWALSize *int64 `json:"safe_wal_size"`

	// Checkpoint is the store's checkpoint; nil when it has none.
	Checkpoint *Checkpoint `json:"checkpoint"`
	// LagBytes is pg_current_wal_lsn() - checkpoint LSN (0 when ahead or
	// without a checkpoint). It counts all WAL, published or not, so an
	// idle agent shows a little until its next keepalive checkpoint.
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is now - the checkpoint's time while LagBytes > 0, else
	// 0: how long ago the store last caught up.
	LagSeconds float64 `json:"lag_seconds"`

	// WarnRetainedBytes is the threshold RetainedWALBytes was checked
	// against.
	WarnRetainedBytes int64 `json:"warn_retained_wal_bytes"`
	// WarnLagSeconds is the threshold LagSeconds was checked against.
	WarnLagSeconds float64 `json:"warn_lag_seconds"`
	// Warnings say what an operator should look at; empty when all is well.
	Warnings []string `json:"warnings"`
}

// Checkpoint is the store's checkpoint in a Report.
type Checkpoint struct {
	LSN       string    `json:"lsn"`
	CommitLSN string    `json:"commit_lsn,omitempty"`
	Time      time.Time `json:"time"`
	// SystemID and Timeline are those of the database the checkpoint was
	// taken on; empty for a checkpoint written before they were recorded.
	SystemID string `json:"system_id,omitempty"`
	Timeline int32  `json:"timeline,omitempty"`
}

// OK reports whether the Report has no warnings.
func (r *Report) OK() bool { return len(r.Warnings) == 0 }

// Read inspects the slot and the store's checkpoint. An error means either
// could not be read; what is wrong with them is in Report.Warnings.
func Read(ctx context.Context, opts Options) (*Report, error) {
	if opts.Slot == "" {
		opts.Slot = agent.DefaultSlot
	}
	if opts.WarnRetained <= 0 {
		opts.WarnRetained = DefaultWarnRetained
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.WarnLag <= 0 {
		opts.WarnLag = DefaultWarnLag
	}
	if opts.Store == nil {
		return nil, errors.New("status: no store")
	}
	r := &Report{Slot: opts.Slot, WarnRetainedBytes: opts.WarnRetained, WarnLagSeconds: opts.WarnLag.Seconds(), Warnings: []string{}}
	current, err := readSlot(ctx, opts.DatabaseURL, r)
	if err != nil {
		return nil, err
	}
	ckpt, ok, err := agent.ReadCheckpoint(ctx, opts.Store, opts.Prefix, opts.Slot)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if ok {
		r.Checkpoint = &Checkpoint{LSN: ckpt.LSN.String(), Time: ckpt.Time.UTC(), SystemID: ckpt.SystemID, Timeline: ckpt.Timeline}
		if ckpt.CommitLSN != 0 {
			r.Checkpoint.CommitLSN = ckpt.CommitLSN.String()
		}
		if current > ckpt.LSN {
			r.LagBytes = int64(current - ckpt.LSN)
			if !ckpt.Time.IsZero() {
				r.LagSeconds = max(0, opts.Now().Sub(ckpt.Time).Seconds())
			}
		}
	}
	r.warn(opts)
	return r, nil
}

func (r *Report) warn(opts Options) {
	switch {
	case !r.SlotExists:
		r.Warnings = append(r.Warnings, fmt.Sprintf("replication slot %q does not exist: the agent streams nothing (run 'lenkwerk migrate up', or check --slot)", r.Slot))
	case r.WALStatus == "lost":
		r.Warnings = append(r.Warnings, fmt.Sprintf("replication slot %q is invalid (wal_status lost): WAL it needed was removed; the agent replaces it and copies every table again when it next connects (or 'lenkwerk resync', agent stopped); raise max_slot_wal_keep_size to avoid it", r.Slot))
	case r.WALStatus == "unreserved":
		r.Warnings = append(r.Warnings, fmt.Sprintf("replication slot %q is about to be lost (wal_status unreserved): the next checkpoint may remove WAL it needs", r.Slot))
	}
	if r.SlotExists && r.RetainedWALBytes > opts.WarnRetained {
		r.Warnings = append(r.Warnings, fmt.Sprintf("replication slot %q retains %s of WAL (more than %s): is the agent running and the store keeping up? Bound it with max_slot_wal_keep_size", r.Slot, Bytes(r.RetainedWALBytes), Bytes(opts.WarnRetained)))
	}
	if r.Checkpoint == nil {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the store has no checkpoint for slot %q under prefix %q: the agent has not synced it yet (or --prefix/--kv name another store)", r.Slot, opts.Prefix))
	}
	if c := r.Checkpoint; c != nil && c.SystemID != "" && r.SystemID != "" && c.SystemID != r.SystemID {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the store's checkpoint is of database system %s, the database is %s: the store mirrors another database; the agent copies everything again at its next start", c.SystemID, r.SystemID))
	} else if c != nil && c.Timeline != 0 && r.Timeline != 0 && c.Timeline != r.Timeline {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the store's checkpoint is of timeline %d, the database is on timeline %d (failover or restore): the agent checks the timeline history at its next start and copies everything again if the checkpoint is not on it", c.Timeline, r.Timeline))
	}
	if r.Checkpoint != nil && r.LagSeconds > opts.WarnLag.Seconds() {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the store is %s behind the database (more than %s): the agent is stalled or slow; its /readyz and log say why "+
			"(a change it cannot mirror holds back everything after it until 'lenkwerk skip' leaves it out)",
			(time.Duration(r.LagSeconds*float64(time.Second))).Round(time.Second), opts.WarnLag))
	}
}

// readSlot fills the slot fields of r and returns the current WAL LSN.
func readSlot(ctx context.Context, databaseURL string, r *Report) (pglogrepl.LSN, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return 0, fmt.Errorf("status: connect: %w", err)
	}
	defer conn.Close(context.Background())
	var current string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&current); err != nil {
		return 0, fmt.Errorf("status: read current WAL LSN: %w", err)
	}
	currentLSN, err := pglogrepl.ParseLSN(current)
	if err != nil {
		return 0, fmt.Errorf("status: current WAL LSN %q: %w", current, err)
	}
	r.CurrentWALLSN = current
	// Best effort: pg_control_system() may be closed to the role. The
	// timeline is the current WAL file's.
	var sysID *string
	var tli *int32
	if err := conn.QueryRow(ctx, `SELECT system_identifier::text, ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int FROM pg_control_system()`).Scan(&sysID, &tli); err == nil && tli != nil {
		r.SystemID, r.Timeline = deref(sysID), *tli
	}
	var (
		database, plugin, walStatus, restart, confirmed *string
		pid                                             *int32
		retained, safe                                  *int64
	)
	err = conn.QueryRow(ctx, `
		SELECT database, plugin, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text,
		       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status, safe_wal_size
		  FROM pg_replication_slots WHERE slot_name = $1`, r.Slot).
		Scan(&database, &plugin, &r.Active, &pid, &restart, &confirmed, &retained, &walStatus, &safe)
	if errors.Is(err, pgx.ErrNoRows) {
		return currentLSN, nil
	}
	if err != nil {
		return 0, fmt.Errorf("status: read slot %s: %w", r.Slot, err)
	}
	r.SlotExists = true
	r.Database, r.Plugin, r.WALStatus = deref(database), deref(plugin), deref(walStatus)
	r.RestartLSN, r.ConfirmedFlushLSN = deref(restart), deref(confirmed)
	if pid != nil {
		r.ActivePID = int(*pid)
	}
	if retained != nil {
		r.RetainedWALBytes = max(0, *retained)
	}
	r.SafeWALSize = safe
	return currentLSN, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
