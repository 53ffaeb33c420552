package pgkv_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// Concurrent use of stores: writers on many connections commit in
// revision order, and a reading store shares one connection among its
// listener, watches and reads; every watch sees every revision once.

// TestConcurrentWritersCommitInRevisionOrder: many goroutines over many
// connections write single puts and batches while a watcher (on its own
// store) checks that every revision arrives exactly once, in order, with
// no gap. A sequence-based revision would let a later revision commit
// first and the watcher skip the earlier one.
func TestConcurrentWritersCommitInRevisionOrder(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	writers := []*kvdriver.Store{
		openStore(t, withParams(dbURL, "pool_max_conns", "8")),
		openStore(t, withParams(dbURL, "pool_max_conns", "8")),
	}
	watcherStore := openStore(t, dbURL)
	ctx := ctxT(t)
	_, start, err := watcherStore.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(watcherStore.Watch(wctx, "/", start))

	const goroutines, perGoroutine = 24, 40
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		revs    = map[int64]int{} // revision → events in it
		maxRev  int64
		batches int
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := writers[g%len(writers)]
			for i := 0; i < perGoroutine; i++ {
				var (
					rev int64
					err error
					n   = 1
				)
				if i%5 == 4 {
					n = 3
					rev, err = s.Apply(ctx, []kvdriver.Op{
						kvdriver.Put(fmt.Sprintf("/g%d/b/%d/x", g, i), []byte(`1`)),
						kvdriver.Put(fmt.Sprintf("/g%d/b/%d/y", g, i), []byte(`2`)),
						kvdriver.Put(fmt.Sprintf("/g%d/b/%d/z", g, i), []byte(`3`)),
					})
				} else {
					rev, err = s.Put(ctx, fmt.Sprintf("/g%d/%d", g, i%4), []byte(fmt.Sprint(i)))
				}
				if err != nil {
					t.Errorf("goroutine %d write %d: %v", g, i, err)
					return
				}
				mu.Lock()
				if _, dup := revs[rev]; dup {
					t.Errorf("revision %d returned twice", rev)
				}
				revs[rev] = n
				maxRev = max(maxRev, rev)
				if n > 1 {
					batches++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if got, want := int64(len(revs)), maxRev-start; got != want {
		t.Fatalf("%d writes returned revisions %d..%d: not dense", got, start+1, maxRev)
	}
	evs := w.until(t, maxRev, 30*time.Second)
	checkSequence(t, evs, start, maxRev)
	perRev := map[int64]int{}
	for _, ev := range evs {
		perRev[ev.Revision]++
	}
	for rev, n := range revs {
		if perRev[rev] != n {
			t.Fatalf("revision %d: watcher saw %d events, want %d", rev, perRev[rev], n)
		}
	}
	// A batch is never split across responses.
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[int64]int{}
	for i, r := range w.resps {
		for _, ev := range r.Events {
			if j, ok := seen[ev.Revision]; ok && j != i {
				t.Fatalf("revision %d split across responses %d and %d", ev.Revision, j, i)
			}
			seen[ev.Revision] = i
		}
	}
	t.Logf("%d revisions (%d batches) from %d goroutines on %d stores, all delivered in order", len(revs), batches, goroutines, len(writers))
}

// TestInterleavedTransactionsCannotCommitOutOfOrder plays the dangerous
// interleaving by hand: transaction A takes a revision and stays open;
// transaction B tries to write meanwhile. B must not obtain a revision until
// A commits, so B can never commit a higher revision before A's lower one.
func TestInterleavedTransactionsCannotCommitOutOfOrder(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, dbURL)
	ctx := ctxT(t)
	start, err := s.Put(ctx, "/o/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(s.Watch(wctx, "/o", start))

	connA, connB, observer := connect(t, dbURL), connect(t, dbURL), connect(t, dbURL)
	const apply = `SELECT lenkwerk_kv.kv_apply(ARRAY[$1::text], ARRAY[convert_to($2, 'UTF8')], 'lenkwerk_kv_changes')`
	txA, err := connA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var revA int64
	if err := txA.QueryRow(ctx, apply, "/o/a", `"A"`).Scan(&revA); err != nil {
		t.Fatal(err)
	}
	if revA != start+1 {
		t.Fatalf("A took revision %d, want %d", revA, start+1)
	}

	type result struct {
		rev int64
		err error
	}
	bDone := make(chan result, 1)
	go func() {
		txB, err := connB.Begin(ctx)
		if err != nil {
			bDone <- result{err: err}
			return
		}
		var rev int64
		if err := txB.QueryRow(ctx, apply, "/o/b", `"B"`).Scan(&rev); err != nil {
			bDone <- result{err: err}
			return
		}
		bDone <- result{rev: rev, err: txB.Commit(ctx)}
	}()

	// B is waiting on A's lock: it has no revision yet.
	pidB := connB.PgConn().PID()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting bool
		if err := observer.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pidB).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case r := <-bDone:
			t.Fatalf("B wrote revision %d (err %v) while A (revision %d) was still open: revisions can commit out of order", r.rev, r.err, revA)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("B neither blocked nor finished")
		}
		time.Sleep(10 * time.Millisecond) // polling pg_stat_activity
	}
	// The store revision does not include A yet; nothing is delivered.
	if _, rev, err := s.List(ctx, "/o"); err != nil || rev != start {
		t.Fatalf("List during open A: rev %d, %v; want %d", rev, err, start)
	}

	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-bDone
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.rev != revA+1 {
		t.Fatalf("B took revision %d after A's %d, want %d", r.rev, revA, revA+1)
	}
	evs := w.until(t, r.rev, 15*time.Second)
	checkSequence(t, evs, start, r.rev)
	if evs[0].Key != "/o/a" || evs[1].Key != "/o/b" {
		t.Fatalf("events %v, want /o/a then /o/b", evs)
	}
}

// TestConcurrentWritersUnderSerializable: with SERIALIZABLE as the
// session default, writers that wait for the revision lock get
// serialization failures; the driver retries them, so every write lands,
// once, with dense revisions.
func TestConcurrentWritersUnderSerializable(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "options", "-c default_transaction_isolation=serializable", "pool_max_conns", "8"))
	ctx := ctxT(t)
	conn := connect(t, withParams(dbURL, "options", "-c default_transaction_isolation=serializable"))
	var iso string
	if err := conn.QueryRow(ctx, `SHOW default_transaction_isolation`).Scan(&iso); err != nil || iso != "serializable" {
		t.Fatalf("isolation %q, %v", iso, err)
	}
	_, start, err := s.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	revs := make(chan int64, 8*20)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				rev, err := s.Put(ctx, fmt.Sprintf("/s/%d", g), []byte(fmt.Sprint(i)))
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				revs <- rev
			}
		}()
	}
	wg.Wait()
	close(revs)
	seen := map[int64]bool{}
	for r := range revs {
		seen[r] = true
	}
	for r := start + 1; r <= start+160; r++ {
		if !seen[r] {
			t.Fatalf("revision %d missing from %d writes", r, len(seen))
		}
	}
}

// contend makes kv_apply in schema lenkwerk_kv of dbURL believe another
// writer is waiting for the revision lock (it holds the shared advisory
// lock every writer holds in kv_apply), so it commits asynchronously,
// until the returned function is called.
func contend(t *testing.T, dbURL string) (release func()) {
	t.Helper()
	conn := connect(t, dbURL)
	const key = `hashtextextended('lenkwerk_pgkv lenkwerk_kv', 0)`
	if _, err := conn.Exec(ctxT(t), `SELECT pg_advisory_lock_shared(`+key+`)`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := conn.Exec(ctxT(t), `SELECT pg_advisory_unlock_shared(`+key+`)`); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWritesAndReadsWaitForTheFlush: kv_apply commits asynchronously when
// another writer waits (the revision lock is not held through the WAL
// flush), yet a crash must not lose a revision a reader has seen. On a
// cluster whose WAL writer sleeps 10 s, so only commits that wait for their
// flush flush the WAL: an asynchronous commit made by hand (with another
// writer waiting) is not flushed; a store's Put returns
// only once the WAL is flushed past that commit too (kv_sync), and a
// store's Get, List and Watch of a revision return only once it is flushed.
// TestCrashLosesNoSeenRevision is the end-to-end check.
func TestWritesAndReadsWaitForTheFlush(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"wal_writer_delay": "10s", "wal_writer_flush_after": "0"}})
	dbURL := c.NewDatabase(t)
	ctx := ctxT(t)
	// Even with synchronous_commit=off as the session default.
	s := openStore(t, withParams(dbURL, "options", "-c synchronous_commit=off", "poll-interval", "100ms"))
	conn := connect(t, withParams(dbURL, "options", "-c synchronous_commit=off"))
	flushedPast := func(lsn string) bool {
		t.Helper()
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn`, lsn).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// An asynchronous commit by hand; lsn is at or past its commit record.
	asyncWrite := func(key string) (rev int64, lsn string) {
		t.Helper()
		defer contend(t, dbURL)()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if err := tx.QueryRow(ctx, `SELECT lenkwerk_kv.kv_apply(ARRAY[$1::text], ARRAY[convert_to('1', 'UTF8')], NULL)`, key).Scan(&rev); err != nil {
			t.Fatal(err)
		}
		var setting string
		if err := tx.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil || setting != "off" {
			t.Fatalf("synchronous_commit in the writing transaction = %q, %v; want off", setting, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		if flushedPast(lsn) {
			t.Fatalf("the WAL is flushed past an asynchronous commit at once (%s): the test cannot tell", lsn)
		}
		return rev, lsn
	}

	// A writer alone commits synchronously, even with synchronous_commit
	// off as the session default.
	var setting string
	if err := conn.QueryRow(ctx, `SELECT lenkwerk_kv.kv_apply(ARRAY['/sc/alone'], ARRAY[convert_to('1', 'UTF8')], NULL), current_setting('synchronous_commit')`).Scan(new(int64), &setting); err != nil || setting != "local" {
		t.Fatalf("synchronous_commit of a writer alone = %q, %v; want local", setting, err)
	}

	// A Put while another writer waits commits asynchronously, and returns
	// only once the WAL is flushed past its commit: past lsn too.
	_, lsn := asyncWrite("/sc/hand")
	release := contend(t, dbURL)
	if _, err := s.Put(ctx, "/sc/put", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	release()
	if !flushedPast(lsn) {
		t.Fatalf("Put returned before the WAL was flushed past %s", lsn)
	}

	rev, lsn := asyncWrite("/sc/get")
	if kv, err := s.Get(ctx, "/sc/get"); err != nil || kv.ModRevision != rev {
		t.Fatalf("Get = %v, %v; want revision %d", kv, err, rev)
	}
	if !flushedPast(lsn) {
		t.Fatalf("Get returned revision %d before the WAL was flushed past its commit (%s)", rev, lsn)
	}

	rev, lsn = asyncWrite("/sc/list")
	if _, head, err := s.List(ctx, "/sc"); err != nil || head != rev {
		t.Fatalf("List at %d, %v; want revision %d", head, err, rev)
	}
	if !flushedPast(lsn) {
		t.Fatalf("List returned revision %d before the WAL was flushed past its commit (%s)", rev, lsn)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(s.Watch(wctx, "/sc", rev))
	rev, lsn = asyncWrite("/sc/watch")
	w.until(t, rev, 10*time.Second)
	if !flushedPast(lsn) {
		t.Fatalf("the watch delivered revision %d before the WAL was flushed past its commit (%s)", rev, lsn)
	}
}

// TestReadOnlyStoreHoldsOneConnection: a store that reads and watches
// holds one PostgreSQL connection, shared by its listener, its watches'
// reads and concurrent Gets and Lists, while another store writes; the
// watches still get every revision, in order, once.
func TestReadOnlyStoreHoldsOneConnection(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ctx := ctxT(t)
	admin := connect(t, dbURL)
	writer := openStore(t, withParams(dbURL, "application_name", "lwc-writer"))
	reader := openStore(t, withParams(dbURL, "application_name", "lwc-reader", "poll-interval", "1h"))
	count := func(app string) int {
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1 || '%'`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	start, err := writer.Put(ctx, "/c/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w1 := collect(reader.Watch(wctx, "/c", start))
	w2 := collect(reader.Watch(wctx, "/c/k", start))
	waitFor(t, "the listener to verify notifications", 10*time.Second, func() bool { return pgkv.NotifyErr(reader) == nil })

	var wg sync.WaitGroup
	readErr := make(chan error, 4)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wctx.Err() == nil {
				if _, _, err := reader.List(wctx, "/c"); err != nil && wctx.Err() == nil {
					readErr <- fmt.Errorf("List: %w", err)
					return
				}
				if _, err := reader.Get(wctx, "/c/start"); err != nil && wctx.Err() == nil {
					readErr <- fmt.Errorf("Get: %w", err)
					return
				}
			}
		}()
	}
	maxReader := 0
	var last int64
	for i := 0; i < 200; i++ {
		if last, err = writer.Put(ctx, fmt.Sprintf("/c/k/%d", i%7), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			maxReader = max(maxReader, count("lwc-reader"))
		}
	}
	evs := w1.until(t, last, 20*time.Second)
	checkSequence(t, evs, start, last)
	if evs := w2.until(t, last, 20*time.Second); len(evs) != 200 {
		t.Fatalf("watch of /c/k: %d events, want 200", len(evs))
	}
	maxReader = max(maxReader, count("lwc-reader"))
	cancel()
	wg.Wait()
	select {
	case err := <-readErr:
		t.Fatal(err)
	default:
	}
	if maxReader != 1 {
		t.Fatalf("the read-only store held up to %d connections, want 1", maxReader)
	}
	if n := count("lwc-writer"); n > 2 {
		t.Fatalf("the writing store holds %d connections", n)
	}
}
