package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// The agent's collector settings apply when the environment sets none,
// and never override GOGC or GOMEMLIMIT.
func TestTuneGC(t *testing.T) {
	prevPercent := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(prevPercent); debug.SetMemoryLimit(prevLimit) })

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	if p, l := tuneGC(); p != agentGCPercent || l != agentMemoryLimit {
		t.Errorf("without GOGC/GOMEMLIMIT: GC percent %d, memory limit %d; want %d, %d", p, l, agentGCPercent, agentMemoryLimit)
	}

	debug.SetGCPercent(150)
	debug.SetMemoryLimit(1 << 30)
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	if p, l := tuneGC(); p != 150 || l != 1<<30 {
		t.Errorf("with GOGC=150 GOMEMLIMIT=1GiB: GC percent %d, memory limit %d; want the environment's", p, l)
	}
}
