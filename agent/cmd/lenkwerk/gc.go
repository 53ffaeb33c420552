package main

import (
	"os"
	"runtime/debug"
)

// Garbage collector settings of `lenkwerk agent` when the environment sets
// none. The agent's live heap is a few store batches (MaxBatchOps,
// MaxBatchBytes) and the transaction being decoded, while it allocates
// every row's JSON and key: with Go's default GOGC=100 the collector took a
// large share of its CPU in the bulk benchmarks. Collecting at 5× the live
// heap, with a soft limit that bounds the heap whatever the garbage, made
// bulk throughput 10–25% higher at a peak RSS of 45–72 MB
// (integration/bench/BENCHMARKS.md).
const (
	agentGCPercent   = 400
	agentMemoryLimit = 80 << 20
)

// tuneGC applies the agent's collector settings, leaving what GOGC or
// GOMEMLIMIT set alone; it returns the effective values for the log.
func tuneGC() (gcPercent int, memoryLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(agentGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(agentMemoryLimit)
	}
	gcPercent = debug.SetGCPercent(-1)
	debug.SetGCPercent(gcPercent)
	return gcPercent, debug.SetMemoryLimit(-1)
}
