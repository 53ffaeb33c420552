package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// slowStore delays every Apply and records the newest checkpoint the store
// acknowledged.
type slowStore struct {
	kvdriver.Driver
	delay   time.Duration
	ckKey   string
	applies atomic.Int64

	mu   sync.Mutex
	ckpt pglogrepl.LSN
}

func (s *slowStore) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	s.applies.Add(1)
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	rev, err := s.Driver.Apply(ctx, ops)
	if err != nil {
		return rev, err
	}
	for _, op := range ops {
		if op.Key == s.ckKey && op.Type == kvdriver.OpPut {
			var ck Checkpoint
			if err := json.Unmarshal(op.Value, &ck); err == nil {
				s.mu.Lock()
				s.ckpt = max(s.ckpt, ck.LSN)
				s.mu.Unlock()
			}
		}
	}
	return rev, nil
}

func (s *slowStore) checkpoint() pglogrepl.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ckpt
}

// While a store write is in flight the agent goes on decoding, and the
// transactions that arrive meanwhile are written together (group commit):
// with a slow store, far fewer writes than transactions. No committed value
// is lost to merging (a key updated by many transactions shows each value,
// in order), every transaction is counted once, and the slot is never
// confirmed past what the store acknowledged.
func TestGroupCommitWithSlowStore(t *testing.T) {
	e := newEnv(t, "")
	cfg := e.config()
	slow := &slowStore{Driver: driverOf(e.store), delay: 30 * time.Millisecond, ckKey: CheckpointKey("", e.slot)}
	cfg.Store = kvdriver.NewStore("slow", slow)
	a := e.run(cfg)
	e.converged(converge.Options{})
	w := e.watch()
	txns0, applies0 := a.Status().Transactions, slow.applies.Load()

	// Sample the slot while the agent works: its confirmed position must
	// never be ahead of the store's checkpoint (read after it: the store's
	// only grows).
	conn, err := pgx.Connect(context.Background(), e.url) // e.db is the test's
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	stop := make(chan struct{})
	var ahead []string
	var samples int
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			var confirmed pglogrepl.LSN
			if err := conn.QueryRow(context.Background(), `SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&confirmed); err != nil {
				ahead = append(ahead, "read the slot: "+err.Error())
				return
			}
			if ck := slow.checkpoint(); confirmed > ck {
				ahead = append(ahead, fmt.Sprintf("slot confirmed %s, store checkpoint %s", confirmed, ck))
			}
			samples++
		}
	}()

	// Transactions on keys of their own, and every third one updating the
	// same key.
	const keys, every = 300, 3
	n := 0
	for i := range keys {
		e.exec(`SELECT storage.save_config($1, '1')`, fmt.Sprint("k", i))
		n++
		if i%every == 0 {
			e.exec(`SELECT storage.save_config('counter', $1)`, strconv.Itoa(i/every))
			n++
		}
	}
	e.converged(converge.Options{})
	waitFor(t, "every transaction counted", 10*time.Second, func() bool { return a.Status().Transactions-txns0 >= int64(n) })
	close(stop)
	<-sampled

	if got := a.Status().Transactions - txns0; got != int64(n) {
		t.Errorf("%d transactions counted, want %d", got, n)
	}
	writes := slow.applies.Load() - applies0
	t.Logf("%d transactions in %d store writes; %d slot samples", n, writes, samples)
	if writes > int64(n/3) {
		t.Errorf("%d store writes for %d transactions behind a slow store: no group commit", writes, n)
	}
	if samples == 0 {
		t.Error("the slot was never sampled")
	}
	for _, a := range ahead {
		t.Error(a)
	}
	last := -1
	for _, ev := range w.snapshot() {
		if ev.Key != "/Config/counter" || ev.Type != kvdriver.OpPut {
			continue
		}
		var row struct{ Value json.RawMessage }
		if err := json.Unmarshal(ev.Value, &row); err != nil {
			t.Fatal(err)
		}
		v, err := strconv.Atoi(strings.Trim(string(row.Value), `"`))
		if err != nil {
			t.Fatalf("counter value %q: %v", row.Value, err)
		}
		if v != last+1 {
			t.Errorf("counter went from %d to %d: a committed value lost or out of order", last, v)
		}
		last = v
	}
	if want := (keys - 1) / every; last != want {
		t.Errorf("counter ends at %d, want %d", last, want)
	}
	cks, _ := w.checkpoints(t, slow.ckKey)
	for i := 1; i < len(cks); i++ {
		if cks[i].LSN < cks[i-1].LSN {
			t.Errorf("checkpoint went back from %s to %s", cks[i-1].LSN, cks[i].LSN)
		}
	}
}

// A store failure in the applier ends the session while the session
// goroutine is receiving; the agent reconnects, and nothing handed over
// before the failure is lost.
func TestPipelineFailureReconnects(t *testing.T) {
	e := newEnv(t, "")
	cfg := e.config()
	flaky := &failingStore{Driver: driverOf(e.store)}
	cfg.Store = kvdriver.NewStore("flaky", flaky)
	a := e.run(cfg)
	e.converged(converge.Options{})
	flaky.fail.Store(true)
	for i := range 20 {
		e.exec(`SELECT storage.save_config($1, '1')`, fmt.Sprint("f", i))
	}
	waitFor(t, "the session to fail", 20*time.Second, func() bool { return a.Status().Err != nil })
	flaky.fail.Store(false)
	e.converged(converge.Options{})
}

type failingStore struct {
	kvdriver.Driver
	fail atomic.Bool
}

func (f *failingStore) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	if f.fail.Load() {
		return 0, fmt.Errorf("injected outage: %w", context.DeadlineExceeded)
	}
	return f.Driver.Apply(ctx, ops)
}
