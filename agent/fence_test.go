package agent

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
	dto "github.com/prometheus/client_model/go"
)

// gate wraps a real store and, once armed, holds the first Apply that
// writes key until released: an agent frozen between receiving a
// transaction and writing it.
type gate struct {
	kvdriver.Driver
	key     string
	armed   atomic.Bool
	held    chan struct{} // closed when the Apply is held
	release chan struct{}
	result  chan error // the held Apply's error, once released
}

func newGate(s *kvdriver.Store, key string) *gate {
	return &gate{Driver: driverOf(s), key: key, held: make(chan struct{}), release: make(chan struct{}), result: make(chan error, 1)}
}

func (g *gate) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	hold := false
	for _, op := range ops {
		hold = hold || (op.Type == kvdriver.OpPut && op.Key == g.key)
	}
	if !hold || !g.armed.CompareAndSwap(true, false) {
		return g.Driver.Apply(ctx, ops)
	}
	close(g.held)
	<-g.release
	// The store call itself is not cut short: as a write that left before
	// the freeze and arrives late.
	rev, err := g.Driver.Apply(context.Background(), ops)
	g.result <- err
	return rev, err
}

// TestFenceStaleAgent: agent A receives a transaction and freezes before
// its store write; its walsender is terminated, B takes over and applies
// that and later transactions to the same key. When A's write finally
// arrives it fails with ErrConflict (the checkpoint moved), so A's older
// value never replaces B's, and the store converges.
func TestFenceStaleAgent(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	const key = "/Config/retention"
	g := newGate(e.store, key)
	cfgA := e.config()
	cfgA.Store = kvdriver.NewStore("gate", g)
	cfgA.ApplyTimeout = time.Minute // the held write must not time out
	a := e.run(cfgA)
	e.converged(converge.Options{})

	cfgB := e.config()
	cfgB.StandbyRetry = 50 * time.Millisecond
	b := newAgent(t, cfgB)
	t.Cleanup(runAgent(t, "agent B", b))
	waitFor(t, "B to wait as a standby", 20*time.Second, func() bool { return b.Status().Standby })

	g.armed.Store(true)
	e.exec(`UPDATE storage.config SET value = '{"by": "A"}' WHERE key = 'retention'`)
	select {
	case <-g.held:
	case <-time.After(20 * time.Second):
		t.Fatal("A did not try to write the transaction")
	}
	defer func() {
		select {
		case <-g.release:
		default:
			close(g.release)
		}
	}()
	// A loses PostgreSQL: its walsender, and with it the agent lock, ends.
	e.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, e.slot)
	waitFor(t, "B to stream", 30*time.Second, func() bool { return b.Status().Streaming })
	e.exec(`UPDATE storage.config SET value = '{"by": "B"}' WHERE key = 'retention'`)
	waitFor(t, "B's value in the store", 30*time.Second, func() bool {
		v, _ := e.get(key)
		return strings.Contains(v, `"B"`)
	})
	ckB := e.checkpoint()

	w := e.watch()
	// Give A's session time to see its walsender terminated first: its
	// write then comes back fenced after the session ended, which must
	// count as fenced all the same (the other order is the quick one).
	time.Sleep(300 * time.Millisecond)
	close(g.release)
	select {
	case err := <-g.result:
		if !errors.Is(err, kvdriver.ErrConflict) {
			t.Errorf("A's late write: err = %v, want ErrConflict", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("A's late write did not return")
	}
	// A's older value (or checkpoint) must never come back after B's.
	for _, ev := range w.snapshot() {
		if ev.Key == key {
			t.Errorf("%s changed after B's value: %s %s at revision %d", key, ev.Type, ev.Value, ev.Revision)
		}
	}
	if v, _ := e.get(key); !strings.Contains(v, `"B"`) {
		t.Errorf("%s = %s after A's late write, want B's value", key, v)
	}
	if ck := e.checkpoint(); ck.LSN < ckB.LSN {
		t.Errorf("checkpoint went back from %s to %s", ckB.LSN, ck.LSN)
	}
	if t.Failed() {
		t.FailNow()
	}
	waitFor(t, "A to end its fenced session", 20*time.Second, func() bool { return !a.Status().Streaming })
	e.agent = b
	e.exec(`UPDATE storage.config SET value = '{"by": "B2"}' WHERE key = 'retention'`)
	e.converged(converge.Options{})
	var m dto.Metric
	if err := a.met.errs.WithLabelValues(kindFenced).Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		v := m.GetCounter().GetValue()
		t.Errorf("A's errors_total{kind=%q} = %v, want 1", kindFenced, v)
	}
	if st := a.Status(); st.Streaming || st.Active {
		t.Fatalf("A after the fence: streaming %v, active %v (want a standby)", st.Streaming, st.Active)
	}
}
