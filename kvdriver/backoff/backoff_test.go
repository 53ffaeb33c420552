package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNextDoublesToMaxAndResets(t *testing.T) {
	b := Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	want := []time.Duration{10, 20, 40, 50, 50}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != 10*time.Millisecond {
		t.Fatalf("after Reset: %v, want 10ms", d)
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := Backoff{Min: time.Hour, Max: time.Hour}
	if b.Wait(ctx) {
		t.Fatal("Wait on a cancelled context waited")
	}
}

func TestMaxCapsMin(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 100 * time.Millisecond}
	for range 3 {
		if d := b.Next(); d != 100*time.Millisecond {
			t.Fatalf("Min above Max: %v, want Max (100ms)", d)
		}
	}
}

func TestJitterStaysInUpperHalf(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 400 * time.Millisecond, Jitter: true}
	for i, hi := range []time.Duration{100, 200, 400, 400} {
		hi *= time.Millisecond
		if d := b.Next(); d < hi/2 || d > hi {
			t.Fatalf("delay %d: %v, want within [%v, %v]", i, d, hi/2, hi)
		}
	}
	for range 1000 {
		if d := Jitter(3); d < 1 || d > 3 {
			t.Fatalf("Jitter(3ns) = %v, want within [1ns, 3ns]", d)
		}
	}
}
