package testutil_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
)

func TestPollReturnsOnceTrue(t *testing.T) {
	calls := 0
	err := testutil.Poll(context.Background(), 10*time.Second, "the third call", func(context.Context) (bool, error) {
		calls++
		if calls < 3 {
			return true, errors.New("not yet") // true with an error is not done
		}
		return true, nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll: %v after %d calls, want nil after 3", err, calls)
	}
}

func TestPollTimesOutWithTheLastError(t *testing.T) {
	n := 0
	err := testutil.Poll(context.Background(), 200*time.Millisecond, "never", func(context.Context) (bool, error) {
		n++
		return false, fmt.Errorf("attempt %d", n)
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Poll: %v, want context.DeadlineExceeded", err)
	}
	if want := "(last error: attempt "; !strings.Contains(err.Error(), "waiting for never") || !strings.Contains(err.Error(), want) {
		t.Fatalf("Poll: %q, want what and the last error (%s) in it", err, want)
	}
}

func TestPollEndsWithCtx(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := testutil.Poll(ctx, time.Hour, "nothing", func(context.Context) (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Poll: %v, want context.Canceled", err)
	}
}

func TestBuffer(t *testing.T) {
	var b testutil.Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				fmt.Fprint(&b, "x")
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := len(b.String()); got != 400 {
		t.Fatalf("%d bytes, want 400", got)
	}
}

func TestGo(t *testing.T) {
	started := make(chan struct{})
	var ended bool
	stop := testutil.Go(t, context.Background(), "run", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		ended = true
		return nil
	})
	<-started
	stop()
	if !ended {
		t.Fatal("stop returned before run did")
	}
	stop() // again: nothing

	// An error from run fails the test.
	ft := &fakeTB{TB: t}
	testutil.Go(ft, context.Background(), "failing", func(context.Context) error { return errors.New("boom") })()
	if got := strings.Join(ft.errors, "\n"); got != "failing: boom" {
		t.Fatalf("errors %q, want failing: boom", got)
	}
}

// fakeTB records Errorf instead of failing the test.
type fakeTB struct {
	testing.TB
	errors []string
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
