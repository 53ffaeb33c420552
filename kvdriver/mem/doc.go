// Package mem is an in-process kvdriver driver with the same semantics as
// the etcd driver: store revisions, atomic batches, watches from a revision
// replayed from a bounded history, compaction, and etcd's size limits. It is
// meant for library users' tests and for Lenkwerk's dev mode; nothing is
// persisted.
//
// Open it by URL:
//
//	mem://                a fresh private store
//	mem://NAME            the store NAME, shared by every Open of it in the process
//	mem://NAME?history=100000&max-batch-ops=1000
//
// or with a Config:
//
//	store, err := mem.Open(ctx, mem.Config{Name: "test", History: 100})
//
// URL parameters (all optional):
//
//	history           revisions of change history kept for watches (default 10000)
//	max-key-bytes     Limits.MaxKeyBytes   (default and maximum 1024)
//	max-value-bytes   Limits.MaxValueBytes (default 1 MiB)
//	max-batch-ops     Limits.MaxBatchOps   (default 128, etcd's --max-txn-ops)
//	max-batch-bytes   Limits.MaxBatchBytes (default 1.5 MiB, etcd's --max-request-bytes)
//
// The default limits mirror a default etcd server, so code tested against
// mem refuses the batches etcd would refuse.
//
// A named store lives until the process exits, across Close of every store
// opened on it, so a test can close and reopen it like a restarted client.
// The first Open of a name creates it with that Open's settings; a later
// Open that asks for different settings fails.
//
// Watches read the shared history log rather than being pushed to, so a
// slow watcher never blocks a writer and never loses an event: when it
// falls further behind than the retained history, its watch ends with
// kvdriver.ErrCompacted, as an etcd watch does after compaction, and the
// caller lists again. Watch(ctx, prefix, 0) starts at the revision current
// when Watch is called, so every write made after Watch returns is seen.
//
// Like etcd, an empty store is at revision 1 and the first write makes
// revision 2, so the revision List returns is never 0 (which Watch would
// take for "from now").
//
// Values handed out by Get, List and events are copies of the stored ones
// except for Event.Value, which is shared between watchers: do not modify
// it.
package mem
