package agent

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestParseTimelineHistory(t *testing.T) {
	got, err := parseTimelineHistory([]byte("1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2026-01-01 00:00:00+00\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1] != 0x3000158 || got[2] != 0x5000000 {
		t.Fatalf("parsed %v", got)
	}
	for _, bad := range []string{"x\t0/1\tr\n", "1\n", "1\tnot-an-lsn\tr\n", "0\t0/1\tr\n", "-1\t0/1\tr\n"} {
		if _, err := parseTimelineHistory([]byte(bad)); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
}

func TestHistoryVerdict(t *testing.T) {
	h := serverHistory{SystemID: "7", Timeline: 3, XLogPos: 0x9000000, Ends: map[int32]pglogrepl.LSN{1: 0x3000000, 2: 0x5000000}}
	for _, c := range []struct {
		name string
		ck   Checkpoint
		want string
	}{
		{"old format", Checkpoint{LSN: 0x8000000}, ""},
		{"other system", Checkpoint{LSN: 0x1000000, SystemID: "8", Timeline: 3}, resyncOtherSystem},
		{"same timeline", Checkpoint{LSN: 0x8000000, SystemID: "7", Timeline: 3}, ""},
		{"same timeline past the WAL end", Checkpoint{LSN: 0x9000001, SystemID: "7", Timeline: 3}, resyncHistoryDiverged},
		{"ancestor before its end", Checkpoint{LSN: 0x3000000, SystemID: "7", Timeline: 1}, ""},
		{"ancestor past its end", Checkpoint{LSN: 0x3000001, SystemID: "7", Timeline: 1}, resyncHistoryDiverged},
		{"parent past its end", Checkpoint{LSN: 0x6000000, SystemID: "7", Timeline: 2}, resyncHistoryDiverged},
		{"timeline not on the history", Checkpoint{LSN: 0x1000000, SystemID: "7", Timeline: 4}, resyncHistoryDiverged},
		{"system id without timeline", Checkpoint{LSN: 0x1000000, SystemID: "7"}, ""},
	} {
		if got, why := h.verdict(c.ck); got != c.want {
			t.Errorf("%s: verdict %q (%s), want %q", c.name, got, why, c.want)
		}
	}
	// Without a readable history only the current timeline resumes.
	h.Ends, h.HistoryErr = map[int32]pglogrepl.LSN{}, errors.New("no history file")
	if got, _ := h.verdict(Checkpoint{LSN: 0x1000000, SystemID: "7", Timeline: 1}); got != resyncHistoryDiverged {
		t.Errorf("unreadable history, older timeline: verdict %q, want %q", got, resyncHistoryDiverged)
	}
	if got, why := h.verdict(Checkpoint{LSN: 0x1000000, SystemID: "7", Timeline: 3}); got != "" {
		t.Errorf("unreadable history, current timeline: verdict %q (%s), want resume", got, why)
	}
}

// A checkpoint written before system id and timeline were recorded resumes
// without a copy, and the next checkpoint records them; a checkpoint of
// another database system leads to a full copy.
func TestCheckpointHistoryFields(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	ctx := context.Background()
	cfg := e.config()
	a := e.run(cfg)
	e.converged(converge.Options{})
	if got := resyncCount(t, a, resyncNoCheckpoint); got != 1 {
		t.Fatalf("resyncs{cause=no_checkpoint} = %v, want 1", got)
	}
	ck := e.checkpoint()
	if ck.SystemID == "" || ck.Timeline != 1 {
		t.Fatalf("checkpoint without history: %+v", ck)
	}
	sysID := ck.SystemID
	e.stop()

	// The old format, as an agent before this change wrote it.
	old, err := json.Marshal(map[string]any{"lsn": ck.LSN.String(), "time": ck.Time, "tables": ck.Tables})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctx, CheckpointKey("", e.slot), old); err != nil {
		t.Fatal(err)
	}
	if ck := e.checkpoint(); ck.SystemID != "" || ck.Timeline != 0 || ck.LSN == 0 {
		t.Fatalf("old checkpoint read as %+v", ck)
	}
	a = e.run(cfg)
	e.exec(`SELECT storage.save_config('after_old_format', '1')`)
	e.converged(converge.Options{})
	waitFor(t, "a checkpoint with system id", 30*time.Second, func() bool { return e.checkpoint().SystemID == sysID })
	if copies := counterValue(t, a.met.tableCopies); copies != 0 {
		t.Fatalf("old checkpoint: %v table copies, want none (streamed on)", copies)
	}
	for _, c := range resyncCauses {
		if got := resyncCount(t, a, c); got != 0 {
			t.Fatalf("old checkpoint: resyncs{cause=%s} = %v, want 0", c, got)
		}
	}
	if st := a.Status(); st.SystemID != sysID || st.Timeline != 1 {
		t.Fatalf("status system %q timeline %d", st.SystemID, st.Timeline)
	}
	e.stop()

	// A checkpoint of another database system: the store mirrors another
	// cluster, whatever its LSN says.
	other := e.checkpoint()
	other.SystemID = "1"
	if _, err := e.store.Put(ctx, CheckpointKey("", e.slot), other.value()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctx, "/Config/from_other_system", []byte(`"x"`)); err != nil {
		t.Fatal(err)
	}
	a = e.run(cfg)
	e.converged(converge.Options{})
	if got := resyncCount(t, a, resyncOtherSystem); got != 1 {
		t.Fatalf("resyncs{cause=other_system} = %v, want 1", got)
	}
	if got := e.checkpoint().SystemID; got != sysID {
		t.Fatalf("checkpoint system id %q after resync, want %q", got, sysID)
	}
}

// resyncCount is lenkwerk_agent_resyncs_total{cause} of a.
func resyncCount(t *testing.T, a *Agent, cause string) float64 {
	t.Helper()
	return counterValue(t, a.met.resyncs.WithLabelValues(cause))
}

// counterValue is a counter's value (one of an agent's metrics).
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
