package etcd_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// Each driver benchmark has a raw clientv3 baseline (BenchmarkRawClient…)
// doing the same work against the same embedded server in the same run;
// the ratio is the driver's cost. The server skips fsync: on a shared
// machine disk latency would otherwise drown the client-side difference
// the ratio is meant to show.

var (
	benchOnce sync.Once
	benchSrv  *etcdtest.Server
	benchDir  string
	benchErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchSrv != nil {
		benchSrv.Close()
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

func benchServer(b *testing.B) *etcdtest.Server {
	b.Helper()
	benchOnce.Do(func() {
		if benchDir, benchErr = os.MkdirTemp("", "etcdbench"); benchErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		benchSrv, benchErr = etcdtest.StartServer(ctx, etcdtest.Options{Dir: benchDir, UnsafeNoFsync: true})
		if benchErr == nil {
			benchErr = warmUp(ctx, benchSrv)
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchSrv
}

// warmUp creates every key the benchmarks write, so that the first
// benchmark does not pay for inserts the later ones only overwrite.
func warmUp(ctx context.Context, srv *etcdtest.Server) error {
	s, err := etcd.Open(ctx, etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		return err
	}
	defer s.Close()
	var ops []kvdriver.Op
	flush := func() error {
		_, err := s.Apply(ctx, ops)
		ops = ops[:0]
		return err
	}
	for i := range 1000 {
		ops = append(ops, kvdriver.Put(fmt.Sprintf("/bench/put/%d", i), benchValue))
		if i < benchBatch {
			ops = append(ops, kvdriver.Put(fmt.Sprintf("/bench/batch/%d", i), benchValue))
		}
		if len(ops) >= 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func benchStore(b *testing.B) *kvdriver.Store {
	b.Helper()
	s, err := kvdriver.Open(context.Background(), benchServer(b).URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func benchClient(b *testing.B) *clientv3.Client {
	b.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{benchServer(b).Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchValue is a servermap-sized row.
var benchValue = []byte(`{"id":42,"created":"2026-11-25T15:00:00Z","node":"db1.example.net","port":5432,"status":3,"generation":7,"partitions":[1,2,3,4,5,6,7,8],"comment":"benchmark row of a typical size for Lenkwerk values"}`)

func BenchmarkPut(b *testing.B) {
	s := benchStore(b)
	benchPuts(b, func(ctx context.Context, key string) error {
		_, err := s.Put(ctx, key, benchValue)
		return err
	})
}

func BenchmarkRawClientPut(b *testing.B) {
	c := benchClient(b)
	benchPuts(b, func(ctx context.Context, key string) error {
		_, err := c.Put(ctx, key, string(benchValue))
		return err
	})
}

// benchPuts is the loop of the single-put benchmarks: put writes benchValue
// to key, the keys cycling through /bench/put/0 … /bench/put/999, and the
// process's CPU time is reported.
func benchPuts(b *testing.B, put func(ctx context.Context, key string) error) {
	b.Helper()
	ctx := context.Background()
	i := 0
	cpu := processCPU(b)
	for b.Loop() {
		if err := put(ctx, fmt.Sprintf("/bench/put/%d", i%1000)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportCPU(b, cpu)
}

const benchBatch = 128

func BenchmarkBatchPut128(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	ops := make([]kvdriver.Op, benchBatch)
	for i := range ops {
		ops[i] = kvdriver.Put(fmt.Sprintf("/bench/batch/%d", i), benchValue)
	}
	cpu := processCPU(b)
	for b.Loop() {
		if _, err := s.Apply(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "puts/s")
}

func BenchmarkRawClientBatchPut128(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	keys := make([]string, benchBatch)
	for i := range keys {
		keys[i] = fmt.Sprintf("/bench/batch/%d", i)
	}
	cpu := processCPU(b)
	for b.Loop() {
		// Built per batch, as the driver must: the values change.
		ops := make([]clientv3.Op, benchBatch)
		for i := range ops {
			ops[i] = clientv3.OpPut(keys[i], string(benchValue))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "puts/s")
}

// processCPU returns the CPU time (user+system) the process has used:
// client and embedded server together. It is less disturbed by other load
// on the machine than wall-clock time.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per operation since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
}

// reportLatency reports the p50 and p99 of lat in microseconds.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

// BenchmarkPutWatchLatency: time from issuing a Put to its event arriving
// on a watch opened by another connection.
func BenchmarkPutWatchLatency(b *testing.B) {
	w, s := benchStore(b), benchStore(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rev, err := s.Put(ctx, "/bench/watch/start", benchValue)
	if err != nil {
		b.Fatal(err)
	}
	ch := w.Watch(ctx, "/bench/watch", rev)
	var lat []time.Duration
	cpu := processCPU(b)
	for b.Loop() {
		start := time.Now()
		rev, err := s.Put(ctx, "/bench/watch/k", benchValue)
		if err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			r := <-ch
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			got = r.Revision >= rev
		}
		lat = append(lat, time.Since(start))
	}
	reportCPU(b, cpu)
	reportLatency(b, lat)
}

func BenchmarkRawClientPutWatchLatency(b *testing.B) {
	w, c := benchClient(b), benchClient(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := c.Put(ctx, "/bench/watch/start", string(benchValue))
	if err != nil {
		b.Fatal(err)
	}
	ch := w.Watch(clientv3.WithRequireLeader(ctx), "/bench/watch/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	var lat []time.Duration
	cpu := processCPU(b)
	for b.Loop() {
		start := time.Now()
		resp, err := c.Put(ctx, "/bench/watch/k", string(benchValue))
		if err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			wr := <-ch
			if err := wr.Err(); err != nil {
				b.Fatal(err)
			}
			got = len(wr.Events) > 0 && wr.Events[len(wr.Events)-1].Kv.ModRevision >= resp.Header.Revision
		}
		lat = append(lat, time.Since(start))
	}
	reportCPU(b, cpu)
	reportLatency(b, lat)
}
