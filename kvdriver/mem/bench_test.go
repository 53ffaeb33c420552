package mem_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// The benchmarks run the mem driver next to a raw baseline in the same
// run: a map under a mutex (put, batch) and a map write handed to a
// goroutine over a channel (put→watch). The baseline is the floor; mem
// pays validation, copying, the revision log and the watchers' wake-up on
// top of it.
//
//	go test -run '^$' -bench . ./kvdriver/mem/

var benchValue = []byte(`{"id":1,"host":"db1","port":5432,"status":3}`)

const benchBatch = 100 // within etcd's (and mem's default) 128 operations

func openBench(b *testing.B) *kvdriver.Store {
	b.Helper()
	s, err := mem.Open(context.Background(), mem.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// rawMap is the baseline: what a store does at the very least.
type rawMap struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (r *rawMap) put(k string, v []byte) {
	r.mu.Lock()
	r.m[k] = v
	r.mu.Unlock()
}

func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s/%d", prefix, i)
	}
	return keys
}

func BenchmarkPut(b *testing.B) {
	keys := benchKeys("/bench/put", 1000)
	b.Run("mem", func(b *testing.B) {
		s := openBench(b)
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := s.Put(ctx, keys[i%len(keys)], benchValue); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
	})
	b.Run("raw-map", func(b *testing.B) {
		r := &rawMap{m: map[string][]byte{}}
		for i := 0; i < b.N; i++ {
			r.put(keys[i%len(keys)], benchValue)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
	})
}

func BenchmarkBatchPut(b *testing.B) {
	var batches [10][]kvdriver.Op
	for i := range batches {
		for _, k := range benchKeys(fmt.Sprintf("/bench/batch/%d", i), benchBatch) {
			batches[i] = append(batches[i], kvdriver.Put(k, benchValue))
		}
	}
	b.Run(fmt.Sprintf("mem/%d", benchBatch), func(b *testing.B) {
		s := openBench(b)
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := s.Apply(ctx, batches[i%len(batches)]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "keys/s")
	})
	b.Run(fmt.Sprintf("raw-map/%d", benchBatch), func(b *testing.B) {
		r := &rawMap{m: map[string][]byte{}}
		for i := 0; i < b.N; i++ {
			r.mu.Lock()
			for _, op := range batches[i%len(batches)] {
				r.m[op.Key] = op.Value
			}
			r.mu.Unlock()
		}
		b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "keys/s")
	})
}

// BenchmarkPutWatchLatency measures, one write at a time, the time from
// calling Put to every watcher holding the event; p50 and p99 are
// reported next to ns/op.
func BenchmarkPutWatchLatency(b *testing.B) {
	for _, watchers := range []int{1, 10} {
		b.Run(fmt.Sprintf("mem/watchers=%d", watchers), func(b *testing.B) {
			s := openBench(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rev, err := s.Put(ctx, "/bench/lat/0", benchValue)
			if err != nil {
				b.Fatal(err)
			}
			got := make(chan int64, watchers)
			for w := 0; w < watchers; w++ {
				ch := s.Watch(ctx, "/bench/lat", rev)
				go func() {
					for r := range ch {
						if r.Err != nil {
							b.Error(r.Err)
							return
						}
						got <- r.Revision
					}
				}()
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := s.Put(ctx, "/bench/lat/0", benchValue); err != nil {
					b.Fatal(err)
				}
				for w := 0; w < watchers; w++ {
					<-got
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
	b.Run("raw-chan/watchers=1", func(b *testing.B) {
		r := &rawMap{m: map[string][]byte{}}
		in, out := make(chan []byte), make(chan struct{})
		go func() {
			for v := range in {
				r.put("/bench/lat/0", v)
				out <- struct{}{}
			}
		}()
		defer close(in)
		lat := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			start := time.Now()
			in <- benchValue
			<-out
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		reportPercentiles(b, lat)
	})
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
