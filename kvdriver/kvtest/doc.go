// Package kvtest is the conformance suite every kvdriver driver passes, in
// the style of gocloud.dev's drivertest: a driver's test supplies a Harness
// (how to open a Store on a server) and calls RunConformanceTests. The
// checks use the driver through the portable kvdriver.Store, as every
// caller does.
//
//	type harness struct{ url string } // a server started by the test
//
//	func (h *harness) MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error) {
//		return kvdriver.Open(ctx, h.url)
//	}
//	func (h *harness) Close() {}
//
//	func TestConformance(t *testing.T) {
//		kvtest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kvtest.Harness, error) {
//			return &harness{url: startServer(t)}, nil
//		})
//	}
//
// One server serves the whole run: each check works under its own key
// prefix (/kvtest/<run>/<Check>), so a rerun against the same server does
// not see the previous run's keys. Checks run one after another, since
// Compact is store-wide. A harness that also implements Restarter gets the
// Reconnect check, which stops and restarts the server under an open watch.
//
// Values are compared as JSON documents, not as bytes, so a driver may
// normalise them (PostgreSQL jsonb does). Every wait is bounded; a failure
// names the check, the key or revision, and what was seen instead.
//
// The checks, each a subtest of RunConformanceTests's caller:
//
//	FirstListRevision    List's revision is >= 1 even on a fresh server; a write between List and Watch is seen
//	CRUD                 Get/Put/Delete, ErrNotFound, revisions grow, ModRevision
//	PrefixIsolation      /Index/1 vs /Index/10, /Index vs /IndexField, in List and Watch
//	ListRevision         watching from a List's revision continues exactly after it
//	WatchReplay          watching from an old revision replays exactly the missed events
//	WatchFromZero        afterRev 0 starts at the current revision: no history, new writes seen
//	BatchAtomicity       a batch is one revision, one response, never seen half-applied
//	BatchAllOrNothing    a batch with one bad op, or a Require that fails, writes nothing
//	Require              a batch applies only if its Requires hold, else ErrConflict, nothing written, no event
//	Compaction           ErrCompacted (errors.Is) for a compacted start, recovery by re-listing
//	ConcurrentWriters    every watcher sees every revision exactly once, in order
//	SlowWatcher          a watcher that reads only after 1120 writes, and a replay of them, miss nothing
//	Limits               MaxKeyBytes, MaxValueBytes, MaxBatchOps, MaxBatchBytes: at passes, beyond is ErrTooLarge
//	InvalidKeys          every class of bad key → ErrInvalidKey, nothing written
//	InvalidValues        empty, nil and non-JSON values → ErrInvalidValue, nothing written
//	InvalidBatches       duplicate key, unknown op type → ErrInvalidBatch, nothing written
//	ContextCancel        a cancelled ctx returns promptly with ctx's error; watches close with their ctx
//	Close                Close is idempotent, then ErrClosed; watches end
//	Reconnect            (Restarter only) a watch survives a server restart, nothing missed or repeated
package kvtest
