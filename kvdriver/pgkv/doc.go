// Package pgkv is the kvdriver driver that keeps the store in PostgreSQL
// (tables plus LISTEN/NOTIFY), for sites that run PostgreSQL and nothing
// else. It registers the URL schemes postgres and postgresql:
//
//	import _ "github.com/bagger/lenkwerk/kvdriver/pgkv"
//
//	store, err := kvdriver.Open(ctx, "postgres://lenkwerk@db/bagger?sslmode=verify-full&schema=lenkwerk_kv")
//
// The one other way in is Open with a Config (what ParseURL makes of a URL,
// or DefaultConfig of a libpq connection string, changed in code); it
// returns the same kvdriver.Store. The driver's own features (NotifyErr,
// Driver.Config) are reached from the Store.
//
// # URL parameters
//
// The driver's parameters are removed before pgx parses the URL; all other
// parameters are pgx's (libpq settings, pool_max_conns, server runtime
// parameters). Parameters starting with "lenkwerk-" or "lenkwerk_" that the
// driver does not know are rejected.
//
//	schema=lenkwerk_kv       schema of the tables (an identifier, at most 48 bytes); created if missing
//	migrate=true             apply the embedded migrations on Open; false: the schema must be current
//	listen=true              wake watches with LISTEN/NOTIFY; false: poll only
//	poll-interval=5s         every watch reads the change log this often regardless
//	probe-timeout=5s         how long the listener waits for its own probe NOTIFY
//	history-revisions=100000 keep at least this many revisions of change log (0: no count bound)
//	history-age=24h          discard change-log revisions older than this (0: no age bound)
//	compact-interval=1m      how often the automatic compaction runs (0: never)
//	max-value-bytes=1048576  largest value (1 MiB)
//	max-batch-ops=10000      most operations in one Apply
//	max-batch-bytes=67108864 most key+value bytes in one Apply (64 MiB)
//
// Keys are at most kvdriver.DefaultMaxKeyBytes. The limits are checked
// before anything is sent (kvdriver.ValidateBatch).
//
// # Schema
//
// The driver's golang-migrate migrations are embedded (migrations/*.sql)
// and record their version in <schema>.pgkv_schema_migrations, never in
// Lenkwerk's schema_migrations. The schema holds:
//
//	kv       (key text COLLATE "C" PRIMARY KEY, value bytea, mod_rev bigint): the current state
//	kv_log   (rev, idx, key, value, at): one row per event; value NULL is a delete
//	kv_meta  one row: rev (the store revision), compact_rev (the compaction point), sync_token
//	kv_apply(keys text[], values bytea[], channel text, req_keys text[], req_revs bigint[]): the only write path
//	kv_sync(channel text): makes the commits before it durable, then notifies
//
// Values are stored as the exact bytes written (validated as JSON, never
// re-encoded), so they read back byte for byte, as from etcd. Keys sort in
// byte order (COLLATE "C"), like Go strings and etcd.
//
// # Revisions and ordering
//
// Each Put, Delete and Apply is one call of kv_apply. A store writes
// through one goroutine (group commit): a lone batch is one statement, one
// implicit transaction (followed by kv_sync if it committed asynchronously);
// batches of concurrent callers that wait meanwhile (up to 64) are committed together in one transaction, one kv_apply each,
// so each still gets its own revision and a batch whose Requires fail is
// dropped from the group alone. kv_apply first locks the kv_meta row (SELECT ... FOR NO KEY
// UPDATE) and takes rev+1; the lock is held until commit, so a second
// writer cannot even obtain its revision before the first has committed.
// Revisions therefore commit strictly in order and every revision up to
// kv_meta.rev is committed, without holes (an empty store is at revision
// 1, as etcd is; the first write is 2): the out-of-order commit that makes
// sequence-based designs (kine) lose events cannot happen. The price is
// that writes are serialized; group commit makes concurrent writers of one
// store share commits instead of queueing for the lock one commit at a
// time. Deleting absent keys changes
// nothing and takes no revision. A batch's Requires (kvdriver.Require) are
// checked after the lock is taken, so no writer can slip in between check
// and commit; a mismatch raises SQLSTATE LWK01, which the driver returns as
// kvdriver.ErrConflict, with nothing written. Under a REPEATABLE READ or SERIALIZABLE
// session default a writer that waited for the lock fails with a
// serialization error; nothing was written and the driver retries it.
//
// A writer that other writers wait for does not hold the lock through its
// commit's WAL flush: kv_apply then commits asynchronously (synchronous_commit
// off for its transaction), so the next writer takes its revision as soon as
// the commit record is written, and the flushes of writers in separate
// stores (processes) group instead of queueing one fsync each behind the
// lock. (Every writer holds a shared one-key advisory lock of the schema while in
// kv_apply; one that can upgrade it is alone and commits synchronously, as
// before, which costs a lone writer nothing extra.) Yet a revision a
// reader has seen must not vanish in a crash, or its number would be
// reused for another change that a watcher then skips. Two rules make sure
// it cannot: Apply returns only once its write is durable (the driver runs
// kv_sync right after an asynchronous kv_apply, which the same statement
// tells it: kv_sync's commit flushes the WAL past kv_apply's and, with a
// synchronous standby, waits for it), and a read (Get, List, a watch's read, Watch
// from now) returns nothing that is not durable: it reads the WAL insert
// position in the same statement as the data and, unless the WAL is
// flushed that far or a notification vouched for the revision, waits until
// it is (polling the flush position, and after 50 ms calling kv_sync
// itself). A commit whose writer died before kv_sync is flushed by the WAL
// writer within wal_writer_delay or by the next write; its watchers see it
// at their next poll. When the server is configured with
// synchronous_standby_names and the session's synchronous_commit waits for
// standbys (on, remote_write, remote_apply), kv_apply always commits
// synchronously inside the lock as before: only then is a revision visible
// only after the standby has it, and writers are serialized on the
// standby's round trip again.
//
// A synchronous kv_apply, or else kv_sync, sends
// pg_notify('<schema>_changes', '<rev> <tag>') after the flush: revision
// rev and all before it are durable. The payload is only the revision and
// tag = hex(sha256('<rev> ' || kv_meta.sync_token)), never a value: any
// session may LISTEN, so the token is never sent, and a NOTIFY by a role
// that cannot read kv_meta cannot vouch for a revision.
//
// Restoring a backup or failing over to an asynchronous standby can still
// lose the last revisions: a watch that notices the store revision going
// back ends with an error wrapping kvdriver.ErrCompacted, so the consumer
// lists again. On a hot standby the flush check is skipped: what a standby
// has replayed was flushed on the primary.
//
// # Watch
//
// A store that only reads and watches holds one PostgreSQL connection:
// Get, List, the watches' reads, compaction and the listener share it
// (a pool of one). Once a watch exists the listener LISTENs on it (its
// application_name then gets the suffix -listen: lenkwerk-pgkv-listen by
// default) and waits for notifications whenever nobody else uses it; any
// other use interrupts the wait, and notifications that arrive meanwhile
// are handled by whichever read is on the connection. Writes open their
// own pool (pool_max_conns) on the first write. A server with
// max_connections 100 and its superuser_reserved_connections of 3 thus
// serves about 95 read-only consumers (minus the agent's connections);
// beyond that, raise max_connections, or use etcd, whose watches share
// one gRPC stream per process.
//
// A notification only wakes the watches: each reads, in one statement
// (one snapshot), kv_log's events for its prefix after the last revision
// it delivered, up to kv_meta.rev, through the index kv_log_key_rev
// (key, rev), so a watch far behind reads its prefix's history only, not
// the other keys' revisions; it delivers whole revisions in order. Since
// the data comes from the log, a lost notification only delays a watch:
// when the listener's connection drops or the server restarts, it
// reconnects with capped backoff (50 ms to 5 s) and wakes every watch to
// catch up; every watch also polls every poll-interval, and retries with
// backoff when its reads fail. Nothing is missed and nothing repeated.
//
// # Compaction
//
// Compact(rev) first moves kv_meta.compact_rev, in its own transaction,
// then deletes the log rows at and before it. A watch reads the
// compaction point and the log in the same snapshot, so it sees either the
// old point with all rows or the new point — and a watch whose last
// revision is below the point ends with an error wrapping
// kvdriver.ErrCompacted: a silent gap is impossible. The store also
// compacts automatically every compact-interval to the newer of
// history-revisions behind the head and history-age ago. A watch that is
// current advances its position on every poll even when its prefix is
// quiet, so it is only compacted away if it falls that far behind.
//
// # Permissions
//
// The migrations create the role lenkwerk_kv_reader (NOLOGIN; if absent
// and the migrating role may create roles) and grant it USAGE on the
// schema and SELECT on its tables: members can Get, List and Watch
// (LISTEN needs no privilege) but every write fails with "permission
// denied" (the error says the role is read-only), and their automatic
// compaction stops quietly. Grant it to login roles:
//
//	CREATE ROLE bagger_node LOGIN PASSWORD '…' IN ROLE lenkwerk_kv_reader;
//
// A reader may Open with migrate=true as long as the schema is current:
// the version is checked before any migration lock or DDL. NOTIFY needs no
// privilege either, so any role can wake watchers needlessly; it cannot
// make them see anything that is not in the log, nor anything not yet
// durable (that takes kv_meta's token). A reader that must wait for the
// WAL flush longer than 50 ms calls kv_sync (EXECUTE is PUBLIC's by
// default, as is pg_logical_emit_message, which it uses): a transaction
// that writes a small WAL message, even for a read-only role.
//
// # Connection poolers
//
// LISTEN does not work through a transaction-pooling proxy (pgbouncer
// pool_mode=transaction): the LISTEN runs on a server connection that
// goes back to the pool. The listener detects this by sending itself a
// probe NOTIFY after LISTEN; if it is not back within probe-timeout,
// NotifyErr(store) reports an error wrapping ErrNotifyUnavailable and the
// watches keep working by polling alone (expect up to poll-interval of
// latency). Better: point the store at PostgreSQL directly or at a
// session-pooling proxy, or set listen=false and a short poll-interval.
//
// Migrations take a session-level advisory lock: run them (migrate=true,
// the default) against PostgreSQL or a session pooler, and open through a
// transaction pooler with migrate=false. Writes work through any proxy
// (each transaction is one statement: kv_apply reports in the same
// statement whether kv_sync must follow, and kv_sync may run on any
// server connection); with pgbouncer before 1.21 in transaction mode
// also add default_query_exec_mode=exec (pgx's prepared-statement cache
// needs a session). LISTEN is refused on a hot standby too: a store opened
// on a replica reads and watches by polling.
//
// The listener never holds a transaction open, so it cannot pin
// PostgreSQL's notification queue (8 GB; when full, NOTIFY and with it
// every write fails); other sessions that LISTEN on the channel must not
// idle in a transaction either.
package pgkv
