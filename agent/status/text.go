package status

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes r for people: aligned "name: value" lines, then one
// "WARNING: …" line per warning.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	line := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", name, fmt.Sprintf(format, args...))
	}
	line("slot", "%s", r.Slot)
	if !r.SlotExists {
		line("exists", "no")
	} else {
		line("exists", "yes (database %s)", r.Database)
		if r.Active {
			line("active", "yes (pid %d)", r.ActivePID)
		} else {
			line("active", "no (no agent streams it)")
		}
		line("plugin", "%s", r.Plugin)
		line("restart_lsn", "%s", orNone(r.RestartLSN))
		line("confirmed_flush_lsn", "%s", orNone(r.ConfirmedFlushLSN))
	}
	line("current_wal_lsn", "%s", r.CurrentWALLSN)
	if r.SystemID != "" {
		line("database", "system %s, timeline %d", r.SystemID, r.Timeline)
	}
	if r.SlotExists {
		line("retained_wal", "%s (%d bytes; warning above %s)", Bytes(r.RetainedWALBytes), r.RetainedWALBytes, Bytes(r.WarnRetainedBytes))
		line("wal_status", "%s", orNone(r.WALStatus))
		if r.SafeWALSize == nil {
			line("safe_wal_size", "unlimited (max_slot_wal_keep_size = -1)")
		} else {
			line("safe_wal_size", "%s (%d bytes)", Bytes(*r.SafeWALSize), *r.SafeWALSize)
		}
	}
	if c := r.Checkpoint; c == nil {
		line("checkpoint", "none")
	} else {
		commit := ""
		if c.CommitLSN != "" {
			commit = " commit " + c.CommitLSN
		}
		line("checkpoint", "%s%s at %s", c.LSN, commit, c.Time.Format(time.RFC3339))
		if c.SystemID != "" {
			line("checkpoint_of", "system %s, timeline %d", c.SystemID, c.Timeline)
		} else {
			line("checkpoint_of", "unknown (written before system and timeline were recorded)")
		}
		line("lag_bytes", "%d (%s)", r.LagBytes, Bytes(r.LagBytes))
		line("lag_seconds", "%.1f (warning above %s)", r.LagSeconds, time.Duration(r.WarnLagSeconds*float64(time.Second)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for _, msg := range r.Warnings {
		fmt.Fprintf(&b, "WARNING: %s\n", msg)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
