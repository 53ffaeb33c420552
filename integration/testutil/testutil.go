// Package testutil holds the small helpers Lenkwerk's tests share: waiting
// for a condition (Poll, WaitFor), running something in the background for
// a test's length (Go), and an output buffer that a child process's
// stdout and stderr may write while the test reads it (Buffer).
//
// Tests only: production code never imports this package.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Pauses between two calls of a condition: short at first, so a condition
// that soon holds is seen soon, then longer, so one that asks Docker or a
// busy server does not flood it.
const (
	firstPause = 10 * time.Millisecond
	maxPause   = 100 * time.Millisecond
)

// Poll calls cond until it reports true without an error, ctx ends or
// timeout passes. The error names what was waited for and holds the last
// error cond returned; it wraps ctx's error.
func Poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pause := firstPause
	var last error
	for {
		ok, err := cond(ctx)
		if ok && err == nil {
			return nil
		}
		// The error of a call that ctx ended says nothing new; one from
		// before says why cond never held.
		if err != nil && ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for %s (%v): %w (last error: %v)", what, timeout, ctx.Err(), last)
			}
			return fmt.Errorf("waiting for %s (%v): %w", what, timeout, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
}

// WaitFor polls cond like Poll and fails tb (Fatal) when it does not hold
// within timeout.
func WaitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	if err := Poll(context.Background(), timeout, what, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		tb.Fatal(err)
	}
}

// stopTimeout bounds how long stopping what Go runs may take.
const stopTimeout = time.Minute

// Go runs run (an agent's Run, say) in a goroutine, on a context of its
// own derived from ctx, until the returned stop is called, at the latest
// when the test ends. stop cancels that context and waits for run to
// return; an error from run, or no return within a minute, fails tb
// (Error), named by what. Calling stop again does nothing.
func Go(tb testing.TB, ctx context.Context, what string, run func(context.Context) error) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("%s: %v", what, err)
				}
			case <-time.After(stopTimeout):
				tb.Errorf("%s did not stop within %v", what, stopTimeout)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

// Buffer is a bytes.Buffer safe for concurrent use: a child process's
// stdout and stderr write it while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
