package pgkv_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
)

// The benchmarks run pgkv next to the etcd driver (embedded etcd, fsync
// off) and next to raw pgx on the same PostgreSQL server (fsync off), in
// the same run:
//
//	go test -run '^$' -bench . ./kvdriver/pgkv/
//
// raw-pgx is the floor pgkv pays its revision log, serialization and
// notification on top of: an upsert into a plain table, a multi-row
// upsert, and a bare NOTIFY → LISTEN round trip.

type benchTarget struct {
	name string
	open func(b *testing.B) (writer, watcher *kvdriver.Store)
}

func benchTargets() []benchTarget {
	return []benchTarget{
		{"pgkv", func(b *testing.B) (*kvdriver.Store, *kvdriver.Store) {
			u := pgtest.NewDatabase(b)
			return openStore(b, u), openStore(b, u)
		}},
		{"etcd", func(b *testing.B) (*kvdriver.Store, *kvdriver.Store) {
			srv := etcdtest.New(b)
			return openAny(b, srv.URL()), openAny(b, srv.URL())
		}},
	}
}

func openAny(b *testing.B, rawURL string) *kvdriver.Store {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := kvdriver.Open(ctx, rawURL)
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// rawPgx is a plain table on a fresh database, for the baseline.
func rawPgx(b *testing.B) (*pgx.Conn, string) {
	b.Helper()
	u := pgtest.NewDatabase(b)
	conn := connect(b, u)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE raw (key text COLLATE "C" PRIMARY KEY, value bytea NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	return conn, u
}

const benchBatch = 100 // within etcd's 128 operations per transaction

func BenchmarkPut(b *testing.B) {
	value := []byte(`{"id":1,"host":"db1","port":5432,"status":3}`)
	for _, tg := range benchTargets() {
		b.Run(tg.name, func(b *testing.B) {
			s, _ := tg.open(b)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Put(ctx, fmt.Sprintf("/bench/put/%d", i%1000), value); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
	b.Run("raw-pgx", func(b *testing.B) {
		conn, _ := rawPgx(b)
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO raw VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, fmt.Sprintf("/bench/put/%d", i%1000), value); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
	})
}

func batchOps(i, n int, value []byte) []kvdriver.Op {
	ops := make([]kvdriver.Op, n)
	for j := range ops {
		ops[j] = kvdriver.Put(fmt.Sprintf("/bench/batch/%d/%d", i%10, j), value)
	}
	return ops
}

func BenchmarkBatchPut(b *testing.B) {
	value := []byte(`{"id":1,"host":"db1","port":5432,"status":3}`)
	for _, tg := range benchTargets() {
		b.Run(fmt.Sprintf("%s/%d", tg.name, benchBatch), func(b *testing.B) {
			s, _ := tg.open(b)
			benchApply(b, s, benchBatch, value)
		})
	}
	// pgkv's own limit allows much larger batches; this is its ceiling.
	b.Run("pgkv/1000", func(b *testing.B) {
		s, _ := benchTargets()[0].open(b)
		benchApply(b, s, 1000, value)
	})
	b.Run(fmt.Sprintf("raw-pgx/%d", benchBatch), func(b *testing.B) {
		conn, _ := rawPgx(b)
		ctx := context.Background()
		keys := make([]string, benchBatch)
		values := make([][]byte, benchBatch)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			for j := range keys {
				keys[j], values[j] = fmt.Sprintf("/bench/batch/%d/%d", i%10, j), value
			}
			if _, err := conn.Exec(ctx, `INSERT INTO raw SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, keys, values); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "keys/s")
	})
}

func benchApply(b *testing.B, s *kvdriver.Store, n int, value []byte) {
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ops := batchOps(i, n, value)
		b.StartTimer()
		if _, err := s.Apply(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkPutWatchLatency measures from just before Put to the watch
// (on a second store, i.e. other connections) delivering its event.
func BenchmarkPutWatchLatency(b *testing.B) {
	value := []byte(`{"status":3}`)
	for _, tg := range benchTargets() {
		b.Run(tg.name, func(b *testing.B) {
			s, ws := tg.open(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rev0, err := s.Put(ctx, "/bench/lat/0", value)
			if err != nil {
				b.Fatal(err)
			}
			ch := ws.Watch(ctx, "/bench/lat", rev0)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				begin := time.Now()
				rev, err := s.Put(ctx, "/bench/lat/x", value)
				if err != nil {
					b.Fatal(err)
				}
				waitRev(b, ch, rev)
				lat = append(lat, time.Since(begin))
			}
			reportLatency(b, lat)
		})
	}
	b.Run("raw-pgx", func(b *testing.B) {
		// The floor: NOTIFY on one connection, received by LISTEN on another.
		_, u := rawPgx(b)
		sender, listener := connect(b, u), connect(b, u)
		ctx := context.Background()
		if _, err := listener.Exec(ctx, `LISTEN raw`); err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			begin := time.Now()
			if _, err := sender.Exec(ctx, `SELECT pg_notify('raw', $1)`, fmt.Sprint(i)); err != nil {
				b.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := listener.WaitForNotification(wctx)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(begin))
		}
		reportLatency(b, lat)
	})
}

func waitRev(b *testing.B, ch <-chan kvdriver.WatchResponse, rev int64) {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case r, ok := <-ch:
			if !ok || r.Err != nil {
				b.Fatalf("watch ended: %v", r.Err)
			}
			if r.Revision >= rev {
				return
			}
		case <-timeout.C:
			b.Fatalf("revision %d not delivered within 10s", rev)
		}
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// BenchmarkPrefixCatchUp: a watch of a small prefix from revision 1, in a
// change log of catchUpOther single-event revisions under other keys with
// catchUpSmall revisions of the prefix spread among them. The baseline is
// the same events read with one indexed query from a plain table holding
// the same rows (raw-pgx): the floor of "read the prefix's history".
const (
	catchUpOther = 20_000
	catchUpSmall = 20
)

func BenchmarkPrefixCatchUp(b *testing.B) {
	ctx := context.Background()
	// pgkv is the small prefix; pgkv-all watches "/", the whole log: the
	// case where the key index must not be used.
	for _, tc := range []struct {
		name, prefix string
		want         int
	}{{"pgkv", "/small", catchUpSmall}, {"pgkv-all", "/", catchUpOther + catchUpSmall}} {
		b.Run(tc.name, func(b *testing.B) { benchCatchUp(b, tc.prefix, tc.want) })
	}
	b.Run("raw-pgx", func(b *testing.B) {
		conn, _ := rawPgx(b)
		every := catchUpOther / catchUpSmall
		for _, sql := range []string{
			`CREATE TABLE raw_log (rev bigint PRIMARY KEY, key text COLLATE "C" NOT NULL, value bytea)`,
			`CREATE INDEX ON raw_log (key, rev)`,
			fmt.Sprintf(`INSERT INTO raw_log SELECT g + 1,
				CASE WHEN g %% %[1]d = 0 THEN '/small/' || (g / %[1]d) ELSE '/other/' || (g %% 500) || '/x' END,
				convert_to(g::text, 'UTF8') FROM generate_series(1, %[2]d) g`, every, catchUpOther+catchUpSmall),
			`ANALYZE raw_log`,
		} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			rows, err := conn.Query(ctx, `SELECT rev, key, value FROM raw_log WHERE key >= '/small/' AND key < '/small0' ORDER BY rev`)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := rows.Err(); err != nil {
				b.Fatal(err)
			}
			if n != catchUpSmall {
				b.Fatalf("read %d events, want %d", n, catchUpSmall)
			}
		}
	})
}

// BenchmarkConcurrentPut: puts/s from 1 and 8 goroutines sharing one
// store (pgkv), or each with its own store (pgkv-stores), each putting its
// own keys; raw-pgx is the same upserts on a plain table from as many
// connections.
func BenchmarkConcurrentPut(b *testing.B) {
	value := []byte(`{"id":1,"host":"db1","port":5432,"status":3}`)
	for _, writers := range []int{1, 8} {
		b.Run(fmt.Sprintf("pgkv/%d", writers), func(b *testing.B) {
			u := pgtest.NewDatabase(b)
			s := openStore(b, u)
			concurrentPuts(b, u, writers, func(ctx context.Context, w, i int) error {
				_, err := s.Put(ctx, fmt.Sprintf("/bench/cput/%d/%d", w, i%100), value)
				return err
			})
		})
		if writers > 1 {
			// As many stores, one writer each: separate processes.
			b.Run(fmt.Sprintf("pgkv-stores/%d", writers), func(b *testing.B) {
				putsFromStores(b, pgtest.NewDatabase(b), writers, value)
			})
		}
		b.Run(fmt.Sprintf("raw-pgx/%d", writers), func(b *testing.B) {
			_, u := rawPgx(b)
			conns := make([]*pgx.Conn, writers)
			for i := range conns {
				conns[i] = connect(b, u)
			}
			concurrentPuts(b, u, writers, func(ctx context.Context, w, i int) error {
				_, err := conns[w].Exec(ctx, `INSERT INTO raw VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, fmt.Sprintf("/bench/cput/%d/%d", w, i%100), value)
				return err
			})
		})
	}
}

// BenchmarkConcurrentPutFsync: 1 writer and 8 Stores with one writer
// each, on a cluster of its own with fsync and synchronous_commit on, as
// in production: each commit waits for its WAL flush, inside the revision
// lock.
func BenchmarkConcurrentPutFsync(b *testing.B) {
	value := []byte(`{"id":1,"host":"db1","port":5432,"status":3}`)
	c := pgtest.StartCluster(b, pgtest.Options{Settings: map[string]string{"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}})
	for _, writers := range []int{1, 8} {
		b.Run(fmt.Sprintf("pgkv-stores/%d", writers), func(b *testing.B) {
			putsFromStores(b, c.NewDatabase(b), writers, value)
		})
	}
}

// putsFromStores runs concurrentPuts on database u with a Store of its own
// for each writer, as separate processes would have.
func putsFromStores(b *testing.B, u string, writers int, value []byte) {
	stores := make([]*kvdriver.Store, writers)
	for i := range stores {
		stores[i] = openStore(b, u)
	}
	concurrentPuts(b, u, writers, func(ctx context.Context, w, i int) error {
		_, err := stores[w].Put(ctx, fmt.Sprintf("/bench/cput/%d/%d", w, i%100), value)
		return err
	})
}

// concurrentPuts runs b.N puts from writers goroutines and reports puts/s
// and where the database's backends spent the run, from samples of
// pg_stat_activity every 10 ms: lock-% waiting for a lock (the revision),
// run-% running, client-% waiting for the client (its next statement).
func concurrentPuts(b *testing.B, dbURL string, writers int, put func(ctx context.Context, w, i int) error) {
	ctx := context.Background()
	sampler := connect(b, dbURL)
	// The backends' CPU: the pools connect lazily, so the writers'
	// backends may start during the run (from 0, then).
	backends := func() map[int]time.Duration {
		rows, err := sampler.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()`)
		if err != nil {
			b.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			b.Fatal(err)
		}
		cpu := map[int]time.Duration{}
		for _, pid := range pids {
			cpu[pid] = procCPU(pid)
		}
		return cpu
	}
	pg0 := backends()
	stop, sampled := make(chan struct{}), make(chan [3]int, 1)
	go func() {
		var n [3]int
		defer func() { sampled <- n }()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			var lock, run, client int
			if err := sampler.QueryRow(ctx, `SELECT
					count(*) FILTER (WHERE wait_event_type = 'Lock'),
					count(*) FILTER (WHERE state = 'active' AND wait_event_type IS NULL),
					count(*) FILTER (WHERE state = 'idle' OR wait_event = 'ClientRead')
				FROM pg_stat_activity
				WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
					AND (query LIKE '%kv_apply%' OR query LIKE 'INSERT INTO raw%' OR query IN ('begin', 'commit'))`).Scan(&lock, &run, &client); err != nil {
				b.Logf("sampling pg_stat_activity: %v", err)
				return
			}
			n[0], n[1], n[2] = n[0]+lock, n[1]+run, n[2]+client
		}
	}()
	errs := make(chan error, writers)
	b.ResetTimer()
	self0 := selfCPU()
	for w := 0; w < writers; w++ {
		go func() {
			for i := w; i < b.N; i += writers {
				if err := put(ctx, w, i); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	self := selfCPU() - self0
	close(stop)
	n := <-sampled
	var pg time.Duration
	for pid, t := range backends() {
		pg += t - pg0[pid]
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
	// CPU per put: the database's backends (the writers', the idle
	// ones', the sampler's), and this process (writers, drivers, the
	// sampler).
	b.ReportMetric(float64(pg.Microseconds())/float64(b.N), "pg-cpu-µs/put")
	b.ReportMetric(float64(self.Microseconds())/float64(b.N), "go-cpu-µs/put")
	b.ReportMetric((pg+self).Seconds()/b.Elapsed().Seconds(), "cores")
	if total := n[0] + n[1] + n[2]; total > 0 {
		b.ReportMetric(100*float64(n[0])/float64(total), "lock-%")
		b.ReportMetric(100*float64(n[1])/float64(total), "run-%")
		b.ReportMetric(100*float64(n[2])/float64(total), "client-%")
	}
}

// benchCatchUp times a watch of prefix from revision 1 until it has
// delivered want events, on the log described at BenchmarkPrefixCatchUp.
func benchCatchUp(b *testing.B, prefix string, want int) {
	ctx := context.Background()
	u := pgtest.NewDatabase(b)
	s := openStore(b, u)
	conn := connect(b, u)
	// Every revision through kv_apply, each its own transaction (one
	// transaction updating kv_meta 20k times slows down quadratically).
	every := catchUpOther / catchUpSmall
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN
		FOR g IN 1..%[2]d LOOP
			PERFORM lenkwerk_kv.kv_apply(
				ARRAY[CASE WHEN g %% %[1]d = 0 THEN '/small/' || (g / %[1]d) ELSE '/other/' || (g %% 500) || '/x' END],
				ARRAY[convert_to(g::text, 'UTF8')], NULL);
			COMMIT;
		END LOOP; END $$`, every, catchUpOther+catchUpSmall)); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `ANALYZE lenkwerk_kv.kv_log`); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		wctx, cancel := context.WithCancel(ctx)
		ch := s.Watch(wctx, prefix, 1)
		n := 0
		for r := range ch {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			n += len(r.Events)
			if n >= want {
				break
			}
		}
		cancel()
		for range ch {
		}
		if n != want {
			b.Fatalf("caught up %d events, want %d", n, want)
		}
	}
}

// procCPU is the CPU time (user + system) process pid used so far, 0 if
// it is gone.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis: utime and stime
	// are the 12th and 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond // USER_HZ = 100
}

// selfCPU is this process's CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
