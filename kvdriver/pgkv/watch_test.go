package pgkv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition
	}
}

// listenerPID is the backend of the store's listener in database db.
func listenerPID(t testing.TB, conn *pgx.Conn, db string) int {
	t.Helper()
	var pid int
	err := conn.QueryRow(context.Background(), `SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = 'lenkwerk-pgkv-listen' AND datname = $1`, db).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func dbName(t testing.TB, dbURL string) string {
	t.Helper()
	cc, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return cc.Database
}

// watchLive watches prefix on watcher from rev (until ctx ends) and shows
// the watch live: once watcher's listener has verified notifications,
// writer puts key and the watch delivers it. It returns the watch and the
// put's revision.
func watchLive(t *testing.T, ctx context.Context, watcher, writer *kvdriver.Store, prefix string, rev int64, key, value string) (*collector, int64) {
	t.Helper()
	w := collect(watcher.Watch(ctx, prefix, rev))
	waitFor(t, "the listener to verify notifications", 10*time.Second, func() bool { return pgkv.NotifyErr(watcher) == nil })
	r, err := writer.Put(ctx, key, []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	w.until(t, r, 10*time.Second)
	return w, r
}

// TestLostNotificationsAreCaughtUp: the listener's backend is terminated
// and writes commit while it is gone (new connections to the database are
// refused meanwhile, so the listener cannot be back before them). The poll
// is an hour: only the catch-up after reconnecting can deliver them. Then
// the server restarts and the same holds.
func TestLostNotificationsAreCaughtUp(t *testing.T) {
	cluster := pgtest.StartCluster(t, pgtest.Options{})
	dbURL := cluster.NewDatabase(t)
	db := dbName(t, dbURL)
	admin := connect(t, cluster.URL("postgres", ""))
	ctx := ctxT(t)

	writer := openStore(t, withParams(dbURL, "pool_max_conns", "1"))
	watcher := openStore(t, withParams(dbURL, "poll-interval", "1h", "pool_max_conns", "1"))
	start, err := writer.Put(ctx, "/n/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, _ := watchLive(t, wctx, watcher, writer, "/n", start, "/n/live", `1`)

	// Kill the listener and keep it out while writing.
	oldPID := listenerPID(t, admin, db)
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, oldPID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the listener to notice", 10*time.Second, func() bool { return pgkv.NotifyErr(watcher) != nil })
	var last int64
	for i := 0; i < 5; i++ {
		if last, err = writer.Put(ctx, fmt.Sprintf("/n/missed/%d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS true`); err != nil {
		t.Fatal(err)
	}
	evs := w.until(t, last, 15*time.Second)
	checkSequence(t, evs, start, last)
	if pid := listenerPID(t, admin, db); pid == oldPID || pid == 0 {
		t.Fatalf("listener pid %d after reconnect, was %d", pid, oldPID)
	}

	// A server restart: the same, and writes right after it too.
	admin.Close(ctx)
	if err := cluster.Restart(); err != nil {
		t.Fatal(err)
	}
	var after int64
	waitFor(t, "the writer to reach the restarted server", 15*time.Second, func() bool {
		after, err = writer.Put(ctx, "/n/after-restart", []byte(`"r"`))
		return err == nil
	})
	evs = w.until(t, after, 15*time.Second)
	checkSequence(t, evs, start, after)
	waitFor(t, "the listener to come back", 15*time.Second, func() bool { return pgkv.NotifyErr(watcher) == nil })
	final, err := writer.Put(ctx, "/n/final", []byte(`"f"`))
	if err != nil {
		t.Fatal(err)
	}
	evs = w.until(t, final, 10*time.Second)
	checkSequence(t, evs, start, final)
}

// TestPollSafetyNet: a write whose NOTIFY is never sent (kv_apply with no
// channel) still reaches the watch through the periodic poll.
func TestPollSafetyNet(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "poll-interval", "300ms"))
	ctx := ctxT(t)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(s.Watch(wctx, "/p", 0))
	waitFor(t, "the listener", 10*time.Second, func() bool { return pgkv.NotifyErr(s) == nil })
	conn := connect(t, dbURL)
	var rev int64
	if err := conn.QueryRow(ctx, `SELECT lenkwerk_kv.kv_apply(ARRAY['/p/silent'], ARRAY[convert_to('"quiet"', 'UTF8')], NULL)`).Scan(&rev); err != nil {
		t.Fatal(err)
	}
	evs := w.until(t, rev, 5*time.Second)
	if len(evs) != 1 || evs[0].Key != "/p/silent" || string(evs[0].Value) != `"quiet"` || evs[0].Revision != rev {
		t.Fatalf("events %+v, want the silent put at %d", evs, rev)
	}
}

// TestListenDisabledPolls: listen=false (for transaction-pooling proxies)
// says so in NotifyErr and watches still deliver, by polling.
func TestListenDisabledPolls(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "listen", "false", "poll-interval", "200ms"))
	if err := pgkv.NotifyErr(s); !errors.Is(err, pgkv.ErrNotifyUnavailable) {
		t.Fatalf("NotifyErr = %v, want ErrNotifyUnavailable", err)
	}
	ctx := ctxT(t)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(s.Watch(wctx, "/", 0))
	rev, err := s.Put(ctx, "/l", []byte(`true`))
	if err != nil {
		t.Fatal(err)
	}
	w.until(t, rev, 5*time.Second)
	conn := connect(t, dbURL)
	var listeners int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lenkwerk-pgkv-listen' AND datname = $1`, dbName(t, dbURL)).Scan(&listeners); err != nil || listeners != 0 {
		t.Fatalf("listener connections = %d, %v; want 0 with listen=false", listeners, err)
	}
}

// TestCompaction: Compact's bounds and errors, the automatic bound, and a
// lagging watcher racing compaction: it gets every event in order or
// ErrCompacted, never a silent gap.
func TestCompaction(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, dbURL)
	ctx := ctxT(t)
	var revs []int64
	for i := 0; i < 10; i++ {
		r, err := s.Put(ctx, fmt.Sprintf("/c/%d", i%3), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r)
	}
	if err := s.Compact(ctx, revs[9]+1); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("Compact beyond the head: %v, want an error", err)
	}
	if err := s.Compact(ctx, revs[5]); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(ctx, revs[2]); err != nil {
		t.Fatalf("Compact below the compaction point: %v, want nil", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	old := collect(s.Watch(wctx, "/c", revs[4]))
	<-old.done
	if !errors.Is(old.err, kvdriver.ErrCompacted) || len(old.events) != 0 {
		t.Fatalf("watch from compacted %d: err %v, %d events; want ErrCompacted and none", revs[4], old.err, len(old.events))
	}
	ok := collect(s.Watch(wctx, "/c", revs[5]))
	checkSequence(t, ok.until(t, revs[9], 10*time.Second), revs[5], revs[9])
	conn := connect(t, dbURL)
	var logRows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM lenkwerk_kv.kv_log`).Scan(&logRows); err != nil || logRows != 4 {
		t.Fatalf("log rows after Compact = %d, %v; want 4", logRows, err)
	}

	// Automatic: keep 3 revisions.
	auto := openStore(t, withParams(dbURL, "history-revisions", "3", "compact-interval", "50ms"))
	head := revs[9]
	waitFor(t, "automatic compaction", 10*time.Second, func() bool {
		var compacted int64
		if err := conn.QueryRow(ctx, `SELECT compact_rev FROM lenkwerk_kv.kv_meta`).Scan(&compacted); err != nil {
			t.Fatal(err)
		}
		return compacted == head-3
	})
	auto.Close() // the race below has its own compactor

	// A slow watcher behind a compactor that keeps 60 revisions.
	wStart := head
	lag := s.Watch(wctx, "/race", wStart)
	writesDone := make(chan int64)
	go func() {
		var last int64
		for i := 0; i < 300; i++ {
			r, err := s.Put(ctx, fmt.Sprintf("/race/%d", i%5), []byte(fmt.Sprint(i)))
			if err != nil {
				t.Error(err)
				break
			}
			last = r
			if i%10 == 0 {
				if err := s.Compact(ctx, r-60); err != nil {
					t.Error(err)
				}
			}
		}
		writesDone <- last
	}()
	var got []kvdriver.Event
	var endErr error
	for r := range lag {
		if r.Err != nil {
			endErr = r.Err
			break
		}
		got = append(got, r.Events...)
		time.Sleep(5 * time.Millisecond) // a slow consumer
		if len(got) == 300 {
			break
		}
	}
	last := <-writesDone
	if endErr != nil && !errors.Is(endErr, kvdriver.ErrCompacted) {
		t.Fatalf("lagging watch ended with %v", endErr)
	}
	if len(got) > 0 {
		checkSequence(t, got, wStart, got[len(got)-1].Revision)
	}
	t.Logf("lagging watcher: %d of 300 events in order, then %v (last write %d)", len(got), endErr, last)
}

// TestReaderRole: lenkwerk_kv_reader can Get, List and Watch but not write;
// the error says why.
func TestReaderRole(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	writer := openStore(t, dbURL)
	ctx := ctxT(t)
	conn := connect(t, dbURL)
	login := "kv_reader_" + strings.ToLower(dbName(t, dbURL)[len(dbName(t, dbURL))-12:])
	if _, err := conn.Exec(ctx, `CREATE ROLE `+pgx.Identifier{login}.Sanitize()+` LOGIN IN ROLE lenkwerk_kv_reader`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), `DROP ROLE `+pgx.Identifier{login}.Sanitize())
	})
	rev, err := writer.Put(ctx, "/r/a", []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	readerURL := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable&compact-interval=50ms", login, cc.Host, cc.Port, cc.Database)
	reader := openStore(t, readerURL) // migrations on: the schema is current, nothing to do
	if kv, err := reader.Get(ctx, "/r/a"); err != nil || kv.ModRevision != rev {
		t.Fatalf("reader Get = %+v, %v", kv, err)
	}
	kvs, lrev, err := reader.List(ctx, "/r")
	if err != nil || len(kvs) != 1 || lrev != rev {
		t.Fatalf("reader List = %v @%d, %v", kvs, lrev, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, r2 := watchLive(t, wctx, reader, writer, "/r", lrev, "/r/b", `2`)

	_, err = reader.Put(ctx, "/r/c", []byte(`3`))
	if err == nil || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("reader Put: %v; want a permission error", err)
	}
	if _, err := reader.Delete(ctx, "/r/a"); err == nil {
		t.Fatal("reader Delete succeeded")
	}
	if err := reader.Compact(ctx, r2); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("reader Compact: %v; want a permission error", err)
	}
	if kv, err := writer.Get(ctx, "/r/a"); err != nil || kv.ModRevision != rev {
		t.Fatalf("after reader writes: Get = %+v, %v; want untouched", kv, err)
	}

	// Losing the privilege ends the watch with the error, not a silent
	// retry loop.
	if _, err := conn.Exec(ctx, `REVOKE SELECT ON lenkwerk_kv.kv_log FROM lenkwerk_kv_reader`); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(ctx, "/r/d", []byte(`4`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("watch still open after losing SELECT on the log")
	}
	if w.err == nil || !strings.Contains(w.err.Error(), "permission denied") {
		t.Fatalf("watch ended with %v, want permission denied", w.err)
	}
}

// TestWatchPagesWholeRevisions: a catch-up larger than one page
// (10,000 events) is cut at revision boundaries, and a revision bigger
// than a page still arrives whole, in one response.
func TestWatchPagesWholeRevisions(t *testing.T) {
	s := openStore(t, pgtest.NewDatabase(t))
	ctx := ctxT(t)
	start, err := s.Put(ctx, "/pg/start", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	batch := func(n int, tag string) int64 {
		ops := make([]kvdriver.Op, n)
		for i := range ops {
			ops[i] = kvdriver.Put(fmt.Sprintf("/pg/%s/%d", tag, i), []byte(fmt.Sprint(i)))
		}
		rev, err := s.Apply(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	a := batch(3, "a")
	b := batch(pgkv.DefaultMaxBatchOps, "b")
	c := batch(1, "c")
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := collect(s.Watch(wctx, "/pg", start))
	evs := w.until(t, c, 20*time.Second)
	checkSequence(t, evs, start, c)
	if len(evs) != 3+pgkv.DefaultMaxBatchOps+1 {
		t.Fatalf("%d events, want %d", len(evs), 3+pgkv.DefaultMaxBatchOps+1)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	perResp := map[int64]int{}
	for i, r := range w.resps {
		revs := map[int64]bool{}
		for _, ev := range r.Events {
			revs[ev.Revision] = true
		}
		for rev := range revs {
			if _, dup := perResp[rev]; dup {
				t.Fatalf("revision %d split across responses", rev)
			}
			perResp[rev] = i
		}
	}
	if perResp[a] == perResp[b] {
		t.Fatalf("revisions %d and %d (10,003 events) came in one response", a, b)
	}
}

// TestWatchEndsWhenRevisionsVanish: if the store's revision goes back (a
// restore, a failover without the last commits), a watch that saw the
// lost revisions ends with ErrCompacted (re-list) instead of silently
// skipping the reused numbers.
func TestWatchEndsWhenRevisionsVanish(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "poll-interval", "200ms"))
	ctx := ctxT(t)
	w := collect(s.Watch(ctx, "/v", 0))
	var last int64
	for i := 0; i < 3; i++ {
		r, err := s.Put(ctx, fmt.Sprintf("/v/%d", i), []byte(`1`))
		if err != nil {
			t.Fatal(err)
		}
		last = r
	}
	w.until(t, last, 10*time.Second)
	conn := connect(t, dbURL)
	if _, err := conn.Exec(ctx, `UPDATE lenkwerk_kv.kv_meta SET rev = rev - 2`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM lenkwerk_kv.kv_log WHERE rev > $1`, last-2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("watch still open after the store revision went back")
	}
	if !errors.Is(w.err, kvdriver.ErrCompacted) || !strings.Contains(w.err.Error(), "went back") {
		t.Fatalf("watch ended with %v, want ErrCompacted saying the revision went back", w.err)
	}
}

// TestWatchFromNowServerDown: "now" is fixed before Watch returns, so with
// the server down the watch ends with the error at once rather than picking
// "now" after the outage and skipping what others wrote meanwhile (as
// etcd's driver does). A negative revision is refused.
func TestWatchFromNowServerDown(t *testing.T) {
	ctx := ctxT(t)
	c := pgtest.StartCluster(t, pgtest.Options{})
	s := openStore(t, withParams(c.NewDatabase(t), "listen", "false"))
	defer s.Close()
	if r, ok := <-s.Watch(ctx, "/neg", -1); !ok || r.Err == nil {
		t.Fatalf("Watch from -1: %v, %v; want an error response", r, ok)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kvtest.CheckWatchFromNowDown(t, wctx, s)
}
