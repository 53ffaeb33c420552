// Package e2e holds Lenkwerk's end-to-end tests: the real lenkwerk binary
// (built once per run) between a real PostgreSQL cluster and a real store
// (embedded etcd, or pgkv), driven like an operator would, with real faults:
// the agent SIGKILLed and restarted, the store stopped and started. Every
// test ends with the convergence check of package converge.
//
// TestChaos logs its seed; LENKWERK_CHAOS_SEED=<seed> replays its choices
// and LENKWERK_CHAOS_DURATION=<duration> runs it longer.
package e2e
