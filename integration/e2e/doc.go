// Package e2e holds Lenkwerk's end-to-end tests: the real lenkwerk binary
// (built once per run) between a real PostgreSQL cluster and a real store
// (embedded etcd, or pgkv), driven as an operator would, with real faults:
// the agent SIGKILLed and restarted, the store stopped, killed or wiped,
// PostgreSQL restarted. Every test ends with the convergence check of
// package converge (store == database). Each test's deployment is a
// Stack of package integration/harness on its local backend (a private
// PostgreSQL cluster migrated by `lenkwerk migrate up`, embedded etcd or
// pgkv, agents as child processes), started with the agent stopped; the
// faults are the harness's levers and Process methods.
//
//   - TestHappyPath: migrate up, agent, Bagger's functions, SIGTERM; per store.
//   - TestChaos: the randomized test, with a watcher of the store checking
//     that no transaction is seen split and no value goes back.
//   - TestPostgresRestart, TestSIGTERMDuringStoreOutage,
//     TestAgentStartsBeforePostgres, TestAgentStartsBeforeStore: outages.
//   - TestFailover, TestDuelingInitialSync: two agents on one slot.
//   - TestLargeTransaction, TestSchemaChanges.
//
// Environment: LENKWERK_CHAOS_SEED=<seed> replays TestChaos's choices,
// LENKWERK_CHAOS_DURATION=<duration> runs it longer, and
// LENKWERK_E2E_BUILDFLAGS=-race builds the agent with the race detector
// (a race report fails the test).
package e2e
