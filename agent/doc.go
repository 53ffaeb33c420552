// Package agent is the Lenkwerk replication agent: it streams the Lenkwerk
// database's logical replication slot (pgoutput, proto_version 1, text
// format) and mirrors every published row into a kvdriver.Store as the JSON
// to_jsonb(row) gives with TimeZone=UTC, under keys from agent/keymap.
//
//	a, err := agent.New(agent.Config{DatabaseURL: url, Store: store})
//	err = a.Run(ctx) // until ctx is done; reconnects on every failure
//
// # Transactions and keys
//
// A transaction's changes are buffered coalesced per key (a store batch may
// name a key once; only its last change matters) and applied at its commit
// as one store batch together with the checkpoint. An update that changes
// key columns deletes the old key and puts the new one in the same batch; a
// truncate deletes every store key of the table's template shape. A
// transaction larger than a batch (the store's Limits, capped by
// Config.MaxBatchOps/MaxBatchBytes) is applied in chunks while it streams,
// so it never takes more than one batch of memory; only the last chunk
// carries the checkpoint.
//
// Keys follow agent/keymap's templates (DefaultTemplates: /Config/<key>,
// /PostgresInstance/<host>/<port>, /Servermap, /Dimension/<id>,
// /Index/<id>, /Index/<index_id>/<id>; any other table
// /<schema>/<table>/<primary key values>), under Config.Prefix. Each value
// segment is path-escaped (/ as %2F, % as %25, a whole . or .. segment as
// %2E), so a key always splits back into its parts. Values are the whole
// row as a JSON object, byte for byte what to_jsonb(row) gives with
// TimeZone=UTC for every built-in type (pgjson, tested type by type
// against the server), so a consumer loads one with
// json_populate_record(NULL::storage.<table>, value).
//
// # Single-key tables
//
// A table whose key template has no columns (/Servermap by default; a
// Config.Templates entry, lenkwerk agent --key-template, makes any table
// with a primary key single-key) has one key, which holds the table's
// newest row: the one with the greatest primary key (among the rows the
// publication's row filter publishes), as to_jsonb text, or no key when
// there is no such row. The stream cannot say which row that is after a
// delete, so at the commit of every transaction touching the table the
// agent reads the newest row from the database, in a snapshot that sees
// that transaction: PostgreSQL sends a commit to the agent once its WAL is
// flushed, before other sessions see it (a synchronous standby delays
// that further), and the agent waits until it is visible. Guaranteed:
//   - when the store has applied a transaction that touched the table, the
//     key holds the newest row as of that transaction's commit, or of a
//     later moment: a newer state early, never an older one;
//   - so once the store has every transaction that touched the table (for
//     example, it has a transaction whose commit comes after the last of
//     them in the WAL: the store applies in commit order), the key
//     equals the table's newest row, and stays so until the table changes
//     again; crashes, restarts, replays and a table added to the
//     publication late included (TestSingleKeyNewest).
//
// Exceptions: a newest row that cannot be mirrored blocks the agent
// until it is fixed or skipped (lenkwerk skip leaves the key as it was);
// and the agent must not be a synchronous standby (its application_name in
// synchronous_standby_names): commits would wait for the agent while the
// agent waits for them to become visible, so after 2 s it fails saying so.
//
// # Pipeline and group commit
//
// Store batches are written by an applier goroutine, one at a time and in
// order, while the session goroutine goes on receiving and decoding (or
// reading a table copy): the store and the decoding work at the same time
// instead of taking turns. What is handed over while a batch is in flight
// waits in one pending batch, and consecutive transactions are merged
// into one store write as long as it fits the limits and they touch
// distinct keys (group commit): a burst or a catch-up of many small
// transactions costs a few store writes, each carrying the last
// transaction's checkpoint. A store revision may therefore hold several
// source transactions, each whole (a watcher never sees part of a
// transaction, except the chunks of one larger than a batch); a key
// written by two transactions is written twice, so a watcher sees every
// committed value of every key, in order. The session moves its
// checkpoint, counts the transactions and confirms the position only when
// it reaps the applier's
// acknowledgement. Whatever must see the store current waits for the
// pipeline to drain first: listing the store (truncate, copies), the idle
// keepalive checkpoint, a table copy. Memory: one batch in flight, one
// pending, the transaction being decoded. A failed batch fails the session;
// the next one starts from the store's checkpoint, as after a crash.
//
// # Checkpoint and confirmation
//
// The checkpoint, under <prefix>/.lenkwerk/checkpoint/<slot>, is
//
//	{"lsn":"0/16B3748","commit_lsn":"0/16B3720","time":"…","tables":{"storage.config":"<shape>",…},
//	 "system_id":"7312…","timeline":1}
//
// where lsn is the commit END LSN of the last applied transaction (or the
// slot's consistent point after a copy, or an idle keepalive position) and
// tables lists the copied tables with a hash of their columns. On start the
// agent reads it, streams from it, and skips every transaction whose commit
// starts before it (whose end is at or before it): deduplication is per
// transaction, never per row. PostgreSQL is told a position (write, flush
// and apply, all set explicitly) only after the store acknowledged the batch
// holding it. Keepalives advance the position to ServerWALEnd only between
// transactions, and the store's checkpoint is written first, so the slot is
// never confirmed past the store: a slot ahead of the store's checkpoint
// means the store lost data (restored, replaced), and the agent copies
// everything again. Replies are sent at once when asked for, and at least
// every StatusInterval, also during long writes and store outages.
//
// A crash (SIGKILL) leaves behind, depending on when it happens:
//   - while buffering a transaction, or with it handed to the applier but
//     not yet written: nothing of it; it is replayed.
//   - after some chunks of a large transaction: those chunks (newer values
//     for some keys); the checkpoint is older, so the whole transaction is
//     replayed and rewrites the same final values.
//   - after the batch with the checkpoint, before confirming: the store has
//     the transaction; PostgreSQL resends it and the agent skips it.
//   - during an initial copy: the old checkpoint was deleted first, so the
//     next start copies again; keys already copied are rewritten and keys
//     matching no row deleted.
//   - during the copy of a table added to the publication: the table is not
//     in the checkpoint's tables, so it is copied again on start.
//   - after that copy, before the stream passed its consistent point: the
//     restart replays the table's older changes over the copy; its keys show
//     older values during the catch-up and end equal (last write wins).
//
// # The database's history (failover, restore)
//
// An LSN means something only on one history. system_id and timeline are
// the server's IDENTIFY_SYSTEM answer when the checkpoint was written.
// Before START_REPLICATION, each session (every fan-out slot has its own)
// checks the checkpoint against the server:
//
//	case                                              what the agent does                 resyncs_total cause
//	another system identifier (another cluster)       full copy, warning with both ids    other_system
//	promoted standby that lacks changes the store     the checkpoint lies past where its  history_diverged
//	  has (asynchronous replication), with or         timeline ends in TIMELINE_HISTORY:
//	  without a copy of the slot                      full copy
//	point-in-time restore to before the last changes  full copy                           history_diverged
//	planned switchover: the standby had everything    streams on from the checkpoint,     -
//	  and carries the slot (each fan-out slot too)    no copy
//	promoted standby without the slot, nothing lost   full copy                           slot_missing
//	slot copy whose WAL the standby does not have     full copy after the first failed    slot_wal_removed
//	                                                  START_REPLICATION
//	slot invalidated by the server (wal_status lost,  full copy, warning naming the limit slot_invalidated
//	  max_slot_wal_keep_size exceeded)
//
// A checkpoint LSN past the server's WAL end on the same timeline (a
// restore without a new timeline) is history_diverged too. A checkpoint
// without system_id is not checked, one without timeline only for its
// system id; the session writes both from then on. A full copy
// removes keys that match no row, so values the database lost are taken
// back from the store; the agent never streams from an LSN that is not on
// the server's current history. Not detected: a restore of a base backup
// that keeps the old timeline and has already written past the checkpoint
// (use a recovery target, which starts a new timeline, or lenkwerk resync).
// lenkwerk status shows the database's system id and timeline next to the
// checkpoint's.
//
// A server in recovery is never a source: the session fails ("read-only
// standby … retrying") and retries. Given every server in a multi-host URL
// (postgres://lenkwerk_agent@db1:5432,db2:5432/lenkwerk?target_session_attrs=read-write),
// the agent's query and replication connections reach whichever server
// takes writes and follow a promotion without a URL change (so do
// lenkwerk migrate, status and resync, and pgkv stores: pgx reads such
// URLs). While no
// primary can be reached (connection refused or broken, a server shutting
// down, starting up or in recovery) reconnects are at most 2 s apart, so a
// promotion is followed quickly; errors of a server that answers (a failed
// login, privileges) keep the growing backoff.
//
// With Config.SyncStandbys (lenkwerk agent --sync-standbys NAME,…, the
// application names in pg_stat_replication), a transaction, an initial
// copy and an idle checkpoint reach the store only once those standbys
// flushed their commit, as PostgreSQL 17's synchronized_standby_slots does
// for logical walsenders: a failover to one of them then never takes back
// a value that storage nodes saw (tested: a promotion after the standby
// stopped receiving streams on, and a watcher sees no value go back). A
// named standby that is down holds the store back (logged every minute);
// after a failover the new primary's standbys must carry the names, or the
// option must change. It costs commit → store latency
// (integration/bench/BENCHMARKS.md, "Failover and HA"). Use it when storage
// nodes act on what they read and asynchronous standbys can be promoted.
// Not covered: single-key tables read their newest row from the primary,
// and a transaction larger than a store batch is written in chunks before
// its commit is checked. PostgreSQL 15's synchronous replication
// (Patroni's synchronous_mode) makes commits wait for a standby but not the
// logical walsender, so it does not replace this option.
//
// Patroni's permanent slots keep the slot on the replicas, so a switchover
// costs no copy; how to set Patroni up for Lenkwerk: docker/README.md.
//
// # Initial sync, resync, new tables, schema changes
//
// Without a checkpoint (new or wiped store) or with Resync, the agent drops
// the slot (created by the migrations with SQL, which exports no snapshot)
// and recreates it with CREATE_REPLICATION_SLOT, commits a catalog change
// (a temporary table created and dropped), creates a temporary slot with
// EXPORT_SNAPSHOT, copies every published table as to_jsonb in a
// REPEATABLE READ transaction on that snapshot, deletes store keys of its
// key space (the templates' shapes, never the reserved .lenkwerk keys) that
// match no row, writes the checkpoint (the temporary slot's consistent
// point) in the last batch and streams the slot from it. The detour works
// around a PostgreSQL 15 bug: a TRUNCATE committed while a slot is being
// created can leave the slot unable to decode later writes into that table
// ("could not map filenode", XX000, for good); the catalog change repairs
// the slot for transactions that start after it, and the temporary slot's
// consistent point lies after every transaction that started before. A
// slot that fails so anyway (the role without TEMPORARY, a slot created
// elsewhere) is replaced by the next session, with a copy. So is a slot
// the server invalidated (wal_status lost: it retained more WAL than
// max_slot_wal_keep_size while the agent was stopped or behind, and
// START_REPLICATION fails on it with 55000 for good): each session looks
// at the slot before streaming, warns naming the slot and
// max_slot_wal_keep_size, and copies (resync cause slot_invalidated). A
// larger max_slot_wal_keep_size avoids the copy; the limit itself keeps a
// dead consumer from filling the server's disk.
// A table added to the publication while running, or whose columns changed
// (ADD/DROP COLUMN, type change: to_jsonb of every row changes, but pgoutput
// carries no DDL), is copied from the snapshot of a temporary slot with
// consistent point C; its stream changes in transactions committed before C
// are skipped. The changes of a table not mirrored yet are left out of a
// transaction; at its commit, before its batch is handed over, the agent
// polls the publication and copies such a table if it was added: the
// copy's snapshot holds the transaction, so its rows of the table are there
// once, and the transaction's batch stays whole. Relation messages rebuild the column list and the pgjson
// encoder of a table. A table removed from the publication (or dropped) is
// no longer mirrored; its keys stay until the next initial sync, which
// deletes every key under its default prefix /<schema>/<table>.
//
// # Failures
//
// Every failure ends the session; Run logs it and reconnects after a capped,
// jittered exponential backoff, resuming from the store's checkpoint. A
// store that fails is retried in place (with status updates) without
// dropping the replication connection. When ctx is cancelled (SIGTERM)
// the agent abandons the transaction in flight, confirms what the store
// has and Run returns nil.
//
// # Changes that cannot be mirrored
//
// The schema refuses rows the agent cannot mirror with the store limits
// Lenkwerk states (migration 8: key columns within their share of 1,024
// bytes, JSON with a jsonb form nested at most 500 deep, rows of at most
// 1 MiB as JSON). What still gets through, a store with smaller limits, a
// table added to the publication later or a key template of the
// operator's, is a ValueError naming the table, the store key and the
// transaction's commit LSN (0/0: a table copy): a key that cannot be built,
// a value that cannot be encoded, or one over the store's Limits. The agent
// never passes such a change on its own: it retries with the backoff,
// mirroring nothing after it. While it does, it says so everywhere:
// Status.Blocked, /readyz ("blocked since …", the error and the way out),
// lenkwerk_agent_role{role="blocked"}, the lag gauges growing (seconds from
// the change's commit, bytes from the server's WAL position at every
// attempt), lenkwerk_agent_errors_total{kind="value"}, and `lenkwerk
// status` warns once the store is behind by more than --warn-lag. The log
// has the whole error and the way out once, then one short line a minute.
//
// The way out needs no restart of any agent: `lenkwerk skip` (AddSkip)
// writes an instruction to the store, under SkipKey (the reserved subtree,
// which needs the agent's store credentials), naming exactly that change
// by table, SHA-256 of the key and commit LSN; the error prints the
// command. The agent looks for it at its next attempt (and every second
// while it waits), leaves that change out with a warning, counted in
// lenkwerk_agent_changes_skipped_total, and goes on. The rest of the
// transaction is applied; the store keeps what it had for the key (nothing,
// if it had nothing) until the row changes again, so fix or delete the
// row at the source: that later change is mirrored as usual. An
// instruction for a change the agent can mirror has no effect, so it can
// never hide a change. A table that cannot be mirrored at all (no usable
// replica identity, an unsupported type, a template naming a missing
// column: a ValueError without a key) blocks every transaction that
// touches it: fix the table, or take it out of the publication.
//
// # High availability
//
// Run two or more agents with the same slot and store: exactly one streams.
// A session first takes a PostgreSQL session-level advisory lock (keys
// 0x4c57, hashtext(slot)) on its replication connection, before the initial
// copy (the slot itself is released between its creation and
// START_REPLICATION, so the slot alone cannot keep two copies apart). The
// walsender holds the lock, so the lock ends with it: when the agent is
// killed, its backend terminated, its connection found dead, or the agent
// hangs and wal_sender_timeout ends its walsender (an idle regular
// connection of a hung process would keep the lock for ever: its kernel
// still answers TCP). Only lenkwerk_agent (its members, superusers) may
// take two-key advisory locks in the Lenkwerk database (migration 8), so
// no other role can hold the agents off. An agent that finds the lock
// held is a standby (Status.Standby, metric
// lenkwerk_agent_role{role="standby"}): it blocks
// in pg_advisory_lock, which PostgreSQL grants the moment the holder's
// session ends, in lock_timeout rounds of 5 StandbyRetry so a dead
// connection of its own shows. It then waits, holding the lock, until the
// previous walsender has released the slot (pg_replication_slots.active_pid
// NULL), and streams from the store's checkpoint. TestHAFailover (in
// cmd/lenkwerk) checks the take-over with real processes after SIGKILL of
// the active agent, pg_terminate_backend of its connections and SIGSTOP;
// the times it measured are in integration/bench/BENCHMARKS.md.
//
// No change is lost or applied twice across a hand-over, because the new
// agent starts from the checkpoint in the store, which is written in the
// same atomic batch as the data it covers: every transaction is either in
// the store with the checkpoint past it (the new agent skips it: its commit
// starts before the checkpoint) or not at all (it is streamed again: the
// slot was never confirmed past the store's checkpoint). The test checks
// it with a watcher of the store: each transaction's value and checkpoint
// appear exactly once, in commit order.
//
// An agent that hangs (or is cut off from PostgreSQL but not from the
// store) between receiving a transaction and writing it, and resumes after
// another agent took over, must not complete that store write late: it
// would put older values and an older checkpoint back. The store fences it
// off. A session reads the checkpoint key's ModRevision with the checkpoint
// (its fence; 0 when absent), and every batch it writes carries
// kvdriver.Require(checkpoint key, fence), checked by the store atomically
// with the writes; a batch that writes the checkpoint moves the fence to
// its revision (the chunks of a large transaction leave it; an initial
// sync's removal of the checkpoint sets it to 0). Any checkpoint write of
// another agent changes the revision, so the late batch fails with
// kvdriver.ErrConflict and writes nothing: the session ends at once
// without retrying (warning "fenced: another agent advanced the
// checkpoint", lenkwerk_agent_errors_total{kind="fenced"}), and the next
// session waits for the lock as a standby or reads the new checkpoint
// (TestFenceStaleAgent). A store write whose reply was lost and that is
// retried conflicts with the agent's own checkpoint the same way: the
// session restarts from the store's checkpoint, which has the batch. Not
// covered: two agents both in an initial sync of a store without
// checkpoint (both fences 0) until one of them writes its checkpoint.
//
// A network cut is noticed by the server: the dead agent's walsender, and
// with it the lock, ends after wal_sender_timeout (the agent answers the
// server's keepalive requests at once, so it can be short), or earlier when
// TCP keepalives fail. For a take-over within 10 s after a cut or a hang,
// set on the server
//
//	wal_sender_timeout = 5s
//	tcp_keepalives_idle = 2
//	tcp_keepalives_interval = 1
//	tcp_keepalives_count = 3
//	tcp_user_timeout = 5000        # ms: unacknowledged data (PostgreSQL 12+)
//
// and run the agent with --status-interval 1s (well below
// wal_sender_timeout). A take-over after a real network cut is not tested
// (SIGKILL, SIGSTOP and terminated backends are; integration/containers'
// TestAgentPartitioned cuts a lone agent off and checks that it resumes).
//
// # Fan-out
//
// One process may mirror into several stores: one Agent per store, each
// with its own slot, checkpoint, advisory lock and session, so one store's
// outage holds back no other (only its own slot retains WAL meanwhile).
// lenkwerk agent takes --kv more than once: the first store streams --slot,
// each further one the slot StoreSlot(slot, NAME) = <slot>_NAME, NAME from
// --kv NAME=URL or the store's position (2, 3, …). A missing slot is
// created by the agent on first start, as CREATE_REPLICATION_SLOT …
// EXPORT_SNAPSHOT with an initial copy into that store. A store removed
// from the configuration leaves its slot behind, and a stale slot retains
// WAL without bound: drop it with
//
//	SELECT pg_drop_replication_slot('lw_agent_NAME');
//
// (and set max_slot_wal_keep_size as a safety net).
//
// # Metrics, health and logs
//
// NewMetrics registers the metrics on a registry of the caller's; every
// series has the label store (Config.Name), so one process fanning out
// reports each stream apart:
//
//	lenkwerk_agent_transactions_applied_total     counter
//	lenkwerk_agent_rows_applied_total             counter
//	lenkwerk_agent_apply_latency_seconds          histogram: commit (server clock) → store acknowledged
//	lenkwerk_agent_store_write_duration_seconds   histogram: one store batch write, every attempt
//	lenkwerk_agent_replication_lag_bytes          gauge
//	lenkwerk_agent_replication_lag_seconds        gauge: age of the oldest change not in the store
//	lenkwerk_agent_retained_wal_bytes             gauge: WAL the slot holds back
//	lenkwerk_agent_reconnects_total{cause}        counter
//	lenkwerk_agent_errors_total{kind}             counter
//	lenkwerk_agent_changes_skipped_total          counter: changes left out by lenkwerk skip
//	lenkwerk_agent_transaction_chunks_total       counter: parts of transactions larger than a batch
//	lenkwerk_agent_tables_copied_total            counter: tables copied from a snapshot
//	lenkwerk_agent_role{role}                     gauge: 1 for active, standby, blocked or down
//	lenkwerk_agent_resyncs_total{cause}           counter: full copies
//
// cause (reconnects) and kind are slot_in_use, database, store, value,
// data, fenced or other; resync causes are no_checkpoint, slot_missing,
// slot_undecodable, slot_wal_removed, slot_invalidated, slot_ahead,
// other_system and history_diverged. Every series exists from the start at 0, so an alert
// on its increase fires at the first event.
//
// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz: 200 only when every agent is active, streaming, its store
// healthy and its lag under the bound (DefaultReadyLag, lenkwerk agent
// --ready-lag); otherwise 503 with the reasons (NotReady), for a blocked
// agent the lenkwerk skip command. The agent logs through Config.Logger:
// at info only sessions, syncs, take-overs and failures; at debug one line
// per transaction ("transaction applied"); never one per row.
package agent
