package bench

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

// held is a driver whose Apply has made its write visible and waits to
// return, the moment a reader of the store can already see it.
type held struct {
	kvdriver.Driver
	entered, release chan struct{}
}

func (h held) Apply(context.Context, []kvdriver.Op) (int64, error) {
	h.entered <- struct{}{}
	<-h.release
	return 1, nil
}

// TestTimedCountsRunningApply: a reader that saw a write must see its call
// counted, with its time so far, even before Apply returns (the harness
// read 0 s store time for a write it had seen).
func TestTimedCountsRunningApply(t *testing.T) {
	h := held{entered: make(chan struct{}), release: make(chan struct{})}
	tm := &Timed{Driver: h}
	if d, n := tm.ApplyTime(); d != 0 || n != 0 {
		t.Fatalf("before any call: %v, %d calls; want 0, 0", d, n)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tm.Apply(context.Background(), nil)
	}()
	<-h.entered
	running, n := tm.ApplyTime()
	if n != 1 || running <= 0 {
		t.Errorf("while Apply runs: %v, %d calls; want a positive time, 1 call", running, n)
	}
	close(h.release)
	<-done
	after, n := tm.ApplyTime()
	if n != 1 || after < running {
		t.Errorf("after Apply returned: %v, %d calls; want at least %v, 1 call", after, n, running)
	}
	if again, _ := tm.ApplyTime(); again != after {
		t.Errorf("no call running, yet the time grew from %v to %v", after, again)
	}
}
