package pgkv_test

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestConcurrentWritersGroupCommit: 8 goroutines write through one store,
// half of them compare-and-set increments of one counter (so batches of
// one commit group conflict with each other). Every successful write has
// its own revision, the revisions are exactly consecutive, a watch sees
// each once in order, and the counter equals the number of successful
// increments.
func TestConcurrentWritersGroupCommit(t *testing.T) {
	s := openStore(t, pgtest.NewDatabase(t))
	ctx := ctxT(t)
	start, err := s.Put(ctx, "/g/counter", []byte(`0`))
	if err != nil {
		t.Fatal(err)
	}
	w := collect(s.Watch(ctx, "/g", start))
	var (
		mu         sync.Mutex
		revs       []int64
		increments int
		conflicts  int
		wg         sync.WaitGroup
	)
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				var rev int64
				var err error
				if g%2 == 0 {
					rev, err = s.Put(ctx, fmt.Sprintf("/g/%d/%d", g, i%5), []byte(strconv.Itoa(i)))
				} else {
					var kv kvdriver.KV
					if kv, err = s.Get(ctx, "/g/counter"); err == nil {
						n, _ := strconv.Atoi(string(kv.Value))
						rev, err = s.Apply(ctx, []kvdriver.Op{kvdriver.Require("/g/counter", kv.ModRevision), kvdriver.Put("/g/counter", []byte(strconv.Itoa(n+1)))})
						if errors.Is(err, kvdriver.ErrConflict) {
							mu.Lock()
							conflicts++
							mu.Unlock()
							continue
						}
						if err == nil {
							mu.Lock()
							increments++
							mu.Unlock()
						}
					}
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				revs = append(revs, rev)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	slices.Sort(revs)
	for i, rev := range revs {
		if rev != start+1+int64(i) {
			t.Fatalf("revision %d returned at position %d, want %d (revisions shared or skipped)", rev, i, start+1+int64(i))
		}
	}
	last := revs[len(revs)-1]
	evs := w.until(t, last, 20*time.Second)
	checkSequence(t, evs, start, last)
	kv, err := s.Get(ctx, "/g/counter")
	if err != nil {
		t.Fatal(err)
	}
	if string(kv.Value) != strconv.Itoa(increments) {
		t.Fatalf("counter = %s, want %d successful increments", kv.Value, increments)
	}
	t.Logf("%d writes, %d increments, %d conflicts", len(revs), increments, conflicts)
}
