package pgkv_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

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
