// Package bench measures Lenkwerk end to end against real PostgreSQL and
// real stores (embedded etcd, pgkv), each figure next to a raw baseline
// measured in the same run: these machines are noisy, ratios are what
// matter.
//
// The scenarios (Env.Latency, Env.Bulk, Env.InitialSync, Env.Decode) are
// plain functions returning results, so that the Go benchmarks of this
// package (`make bench`, or `go test -run '^$' -bench . ./integration/bench/`)
// and the lwbench command share them. The agent runs as a separate process
// (`lenkwerk agent`, built once per Env), so its peak RSS (VmHWM) is its
// own; with Options.InProcess it runs inside the benchmark process instead,
// which `go test -cpuprofile` can then profile.
//
// The PostgreSQL cluster is private to the Env and runs with
// synchronous_commit=on (fsync off): with asynchronous commit a walsender
// sees a small transaction only when the WAL writer flushes it, up to
// wal_writer_delay later, which would swamp every latency figure. etcd is
// embedded in the benchmark process (agent/devstack's Stack, fsync off, as
// in the driver benchmarks); pgkv lives in a database of the same cluster.
package bench
