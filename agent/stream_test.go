package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// watcher records every event of the store from now on.
type watcher struct {
	mu     sync.Mutex
	events []kvdriver.Event
	cancel func()
	done   chan struct{}
}

func (e *env) watch() *watcher {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	_, rev, err := e.store.List(ctx, "/")
	if err != nil {
		e.t.Fatal(err)
	}
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	ch := e.store.Watch(ctx, "/", rev)
	go func() {
		defer close(w.done)
		for resp := range ch {
			w.mu.Lock()
			w.events = append(w.events, resp.Events...)
			w.mu.Unlock()
		}
	}()
	e.t.Cleanup(func() { cancel(); <-w.done })
	return w
}

func (w *watcher) snapshot() []kvdriver.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]kvdriver.Event(nil), w.events...)
}

// checkpoints returns the checkpoint events, decoded.
func (w *watcher) checkpoints(t *testing.T, key string) (cks []Checkpoint, revs []int64) {
	for _, ev := range w.snapshot() {
		if ev.Key != key || ev.Type != kvdriver.OpPut {
			continue
		}
		var ck Checkpoint
		if err := json.Unmarshal(ev.Value, &ck); err != nil {
			t.Fatal(err)
		}
		cks = append(cks, ck)
		revs = append(revs, ev.Revision)
	}
	return cks, revs
}

func (e *env) slotConfirmed() pglogrepl.LSN {
	e.t.Helper()
	var lsn pglogrepl.LSN
	if err := e.db.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&lsn); err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

func (e *env) slotPID() int32 {
	e.t.Helper()
	var pid *int32
	if err := e.db.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&pid); err != nil {
		e.t.Fatal(err)
	}
	if pid == nil {
		return 0
	}
	return *pid
}

// A restart replays what the agent had not confirmed; the store's
// checkpoint makes it skip whole transactions, so each committed
// transaction reaches the store once.
func TestRestartFromCheckpointWithoutDuplicates(t *testing.T) {
	e := newEnv(t, "")
	first := e.run(e.config())
	// The slot as it is before the writes, put back in its place after
	// the first run: as if the agent had crashed after each store write,
	// before confirming it.
	saved := e.slot + "_saved"
	e.exec(`SELECT pg_copy_logical_replication_slot($1, $2)`, e.slot, saved)
	t.Cleanup(func() {
		_, _ = e.db.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, saved)
	})
	w := e.watch()
	for i := range 20 {
		// A multi-row statement: rows sharing one LSN must all arrive.
		e.exec(fmt.Sprintf(`INSERT INTO storage.config (key, value) VALUES ('a%d', '1'), ('b%d', '2')`, i, i))
	}
	e.converged(converge.Options{})
	e.stop()
	waitFor(t, "the first agent's walsender to go", 30*time.Second, func() bool { return e.slotPID() == 0 })
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.slot)
	e.exec(`SELECT pg_copy_logical_replication_slot($1, $2)`, saved, e.slot)
	e.exec(`SELECT pg_drop_replication_slot($1)`, saved)
	ck := e.checkpoint()
	if c := e.slotConfirmed(); c >= ck.LSN {
		t.Fatalf("slot confirmed %s, not behind the checkpoint %s: the replay is not tested", c, ck.LSN)
	}
	second := e.start(e.config())
	for i := range 5 {
		e.exec(fmt.Sprintf(`SELECT storage.save_config('c%d', '3')`, i))
	}
	e.converged(converge.Options{})
	if got := second.Status().Transactions; got != 5 {
		t.Fatalf("second run applied %d transactions, want 5 (the first 20 are in the store)", got)
	}
	waitFor(t, "confirmation", 10*time.Second, func() bool { return e.slotConfirmed() >= e.checkpoint().LSN })
	puts := map[string]int{}
	for _, ev := range w.snapshot() {
		if ev.Type == kvdriver.OpPut {
			puts[ev.Key]++
		}
	}
	for k, n := range puts {
		if !strings.HasPrefix(k, "/.lenkwerk") && n != 1 {
			t.Errorf("%s written %d times", k, n)
		}
	}
	// Consecutive transactions may share a store write, which carries
	// the last one's checkpoint (group commit): a checkpoint never comes
	// back, and every transaction was applied by exactly one of the runs.
	cks, _ := w.checkpoints(t, CheckpointKey("", e.slot))
	seen := map[pglogrepl.LSN]bool{}
	for _, c := range cks {
		if c.CommitLSN == 0 {
			continue // idle keepalive position
		}
		if seen[c.CommitLSN] {
			t.Errorf("transaction %s applied twice", c.CommitLSN)
		}
		seen[c.CommitLSN] = true
	}
	if got := first.Status().Transactions; got != 20 {
		t.Errorf("first run applied %d transactions, want 20", got)
	}
}

// With no published change, keepalives move the slot (and the store's
// checkpoint first) forward, so an idle agent does not pin WAL.
func TestKeepaliveAdvancesIdleSlot(t *testing.T) {
	e := newEnv(t, "")
	e.run(e.config())
	e.exec(`CREATE TABLE public.unpublished (n int)`)
	e.exec(`INSERT INTO public.unpublished SELECT generate_series(1, 1000)`)
	var target pglogrepl.LSN
	if err := e.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "slot confirmed past the unpublished writes", 20*time.Second, func() bool { return e.slotConfirmed() >= target })
	if ck := e.checkpoint(); ck.LSN < e.slotConfirmed() {
		t.Fatalf("slot confirmed %s past the store's checkpoint %s", e.slotConfirmed(), ck.LSN)
	}
}

// An update that leaves a large json value unchanged sends it as an
// unchanged TOAST value; the agent takes it from the old row.
func TestUnchangedToastValue(t *testing.T) {
	e := newEnv(t, "")
	e.run(e.config())
	var rnd [8 << 10]byte
	_, _ = rand.Read(rnd[:])
	big := `{"blob": "` + hex.EncodeToString(rnd[:]) + `"}` // incompressible: stored out of line
	e.exec(`SELECT storage.save_config('big', $1::json)`, big)
	e.converged(converge.Options{})
	e.exec(`UPDATE storage.config SET id = 1000 WHERE key = 'big'`)
	e.converged(converge.Options{})
	e.exec(`UPDATE storage.config SET key = 'big2' WHERE key = 'big'`) // moves the key too
	e.converged(converge.Options{})
	if v := mustGet(t, e, "/Config/big2"); !strings.Contains(v, hex.EncodeToString(rnd[:64])) {
		t.Fatalf("/Config/big2 lost its value: %.200s", v)
	}
}

// A transaction larger than a store batch is applied in chunks as it
// streams, holding at most one batch; only the last chunk carries the
// checkpoint.
func TestLargeTransactionInChunks(t *testing.T) {
	e := newEnv(t, "")
	a := e.run(e.config())
	w := e.watch()
	const rows = 20000
	e.exec(fmt.Sprintf(`INSERT INTO storage.config (key, value) SELECT 'k' || g, json_build_object('n', g) FROM generate_series(1, %d) g`, rows))
	e.converged(converge.Options{})
	lim := a.batchLimits()
	// Every chunk is taken from the decoding buffer when it reaches a
	// batch (TestDecoderManyRows: never more), while the transaction
	// streams: as many chunks as full batches in it means the buffer never
	// held the transaction.
	if chunks, min := counterValue(t, a.met.chunks), float64(rows/lim.ops); chunks < min {
		t.Errorf("%v chunks, want at least %v", chunks, min)
	}
	cks, revs := w.checkpoints(t, CheckpointKey("", e.slot))
	var txnRev int64
	n := 0
	for i, c := range cks {
		if c.CommitLSN != 0 {
			n++
			txnRev = revs[i]
		}
	}
	if n != 1 {
		t.Fatalf("%d checkpoints written for one transaction, want 1", n)
	}
	for _, ev := range w.snapshot() {
		if strings.HasPrefix(ev.Key, "/Config/") && ev.Revision > txnRev {
			t.Fatalf("%s written at revision %d, after the checkpoint (%d)", ev.Key, ev.Revision, txnRev)
		}
	}
	// Deleting them all is as large.
	e.exec(`DELETE FROM storage.config WHERE key LIKE 'k%'`)
	e.converged(converge.Options{})
}

// Relation messages carry ADD/DROP COLUMN and type changes; rows not
// changed since are copied again, since their to_jsonb changed too.
func TestSchemaChangeMidStream(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`SELECT storage.save_config('a', '1')`)
	a := e.run(e.config())
	e.converged(converge.Options{})
	for _, q := range []string{
		`ALTER TABLE storage.config ADD COLUMN note text DEFAULT 'x'`,
		`INSERT INTO storage.config (key, value) VALUES ('b', '2')`,
		`ALTER TABLE storage.config ADD COLUMN n int DEFAULT 1`,
		`ALTER TABLE storage.config ALTER COLUMN n TYPE numeric`,
		`UPDATE storage.config SET n = 1.50 WHERE key = 'b'`,
		`ALTER TABLE storage.config DROP COLUMN note`,
		`INSERT INTO storage.config (key, value) VALUES ('c', '3')`,
	} {
		e.exec(q)
		e.converged(converge.Options{})
	}
	if st := a.Status(); st.Err != nil {
		t.Fatal(st.Err)
	}
}

// Tables added to the publication are mirrored with their existing rows,
// without restart, also when rows change in the transaction that adds them.
func TestTableAddedToPublication(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TABLE storage.extra (id int PRIMARY KEY, v text)`)
	e.exec(`ALTER TABLE storage.extra REPLICA IDENTITY FULL`)
	e.exec(`INSERT INTO storage.extra SELECT g, 'v' || g FROM generate_series(1, 300) g`)
	e.exec(`CREATE TABLE storage.extra2 (id int PRIMARY KEY, v text)`)
	e.exec(`INSERT INTO storage.extra2 VALUES (1, 'one')`)
	a := e.run(e.config())
	e.converged(converge.Options{})
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		// Keep changing the table while it is added and copied.
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, e.url)
		if err != nil {
			done <- err
			return
		}
		defer conn.Close(ctx)
		for i := 1; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := conn.Exec(ctx, `UPDATE storage.extra SET v = $1 WHERE id = $2`, fmt.Sprint("u", i), 1+i%300); err != nil {
				done <- err
				return
			}
		}
	}()
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.extra`)
	waitFor(t, "copy of storage.extra", 20*time.Second, func() bool {
		_, ok := e.checkpoint().Tables["storage.extra"]
		return ok
	})
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	tx, err := e.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.extra2`, `INSERT INTO storage.extra2 VALUES (2, 'two')`, `UPDATE storage.extra2 SET v = 'uno' WHERE id = 1`} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	if v := mustGet(t, e, "/storage/extra2/1"); !strings.Contains(v, "uno") {
		t.Fatalf("/storage/extra2/1 = %s", v)
	}
	if st := a.Status(); st.Err != nil {
		t.Fatal(st.Err)
	}

	// Changed, then dropped while the agent was down: its old changes are
	// no longer mirrored (the keys stay until a resync), and they must not
	// stop the agent.
	e.stop()
	e.exec(`INSERT INTO storage.extra VALUES (1000, 'late')`)
	e.exec(`DROP TABLE storage.extra`)
	a = e.run(e.config())
	e.exec(`SELECT storage.save_config('after_drop', '1')`)
	waitFor(t, "/Config/after_drop", 20*time.Second, func() bool { _, ok := e.get("/Config/after_drop"); return ok })
	if st := a.Status(); st.Err != nil {
		t.Fatal(st.Err)
	}
	e.stop()
	if err := Resync(context.Background(), e.config()); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
}

// A publication row filter: rows outside it are not mirrored, updates that
// move a row out of it delete its key, and a changed filter copies the
// table again.
func TestRowFilter(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TABLE storage.extra (id int PRIMARY KEY, v text)`)
	e.exec(`ALTER TABLE storage.extra REPLICA IDENTITY FULL`)
	e.exec(`INSERT INTO storage.extra SELECT g, 'v' FROM generate_series(1, 20) g`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.extra WHERE (id > 10)`)
	e.run(e.config())
	e.converged(converge.Options{})
	e.exec(`UPDATE storage.extra SET id = -id WHERE id IN (12, 13)`)    // out of the filter
	e.exec(`UPDATE storage.extra SET id = id + 100 WHERE id IN (2, 3)`) // into it
	e.converged(converge.Options{})
	tx, err := e.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`ALTER PUBLICATION bagger_lw_storage DROP TABLE storage.extra`, `ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.extra WHERE (id > 4)`} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
}
