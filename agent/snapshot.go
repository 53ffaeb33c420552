package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var snapshotName = regexp.MustCompile(`^[0-9A-Fa-f-]+$`)

// initialSync copies every published table from one consistent snapshot:
// the slot is recreated with CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT (a
// slot created with SQL exports none), the tables are read as to_jsonb in a
// REPEATABLE READ transaction on that snapshot, keys of the agent's key
// space that match no row are deleted, and the last batch writes the
// checkpoint: the slot's consistent point, from which streaming continues
// without gap or overlap.
func (s *session) initialSync(ctx context.Context) error {
	slot := s.a.cfg.Slot
	var active bool
	var pid *int32
	var db *string
	var ours bool
	err := s.conn.QueryRow(ctx, `SELECT active, active_pid, database::text, coalesce(database = current_database(), false) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active, &pid, &db, &ours)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if exists && !ours {
		// Slot names are cluster-wide: never drop another database's.
		return fmt.Errorf("replication slot %s belongs to another database (%v); choose another slot name", slot, deref(db))
	}
	if exists && active {
		p := int32(0)
		if pid != nil {
			p = *pid
		}
		return fmt.Errorf("%w: replication slot %q is active for PID %d", ErrSlotInUse, slot, p)
	}
	s.a.log.Info("initial sync: copying every published table from a new snapshot")
	// Tables the old checkpoint names: those no longer published have
	// left keys behind.
	// Read under the agent lock, this is the fence of the whole sync
	// (Resync reads nothing before).
	old, fence, _, err := readCheckpoint(ctx, s.a.cfg.Store, s.a.ckptKey)
	if err != nil {
		return err
	}
	s.fence = fence
	// Forget the old checkpoint before the slot: a crash from here on must
	// lead to another copy, never to streaming from a stale position. The
	// fence is 0 from here until the new checkpoint is written.
	if err := s.apply(ctx, []kvdriver.Op{kvdriver.Delete(s.a.ckptKey)}); err != nil {
		return fmt.Errorf("remove checkpoint: %w", err)
	}
	if exists {
		if _, err := s.conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
	}
	if _, err := pglogrepl.CreateReplicationSlot(ctx, s.repl, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Mode:           pglogrepl.LogicalReplication,
		SnapshotAction: "NOEXPORT_SNAPSHOT",
	}); err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	// The copy comes from a temporary slot's snapshot created after a
	// catalog change, not from the new slot's own: PostgreSQL 15's
	// snapshot builder ignores commits while a slot is in
	// BUILDING_SNAPSHOT, so a TRUNCATE committed then leaves the slot
	// unable to decode, for good, what transactions begun before its
	// consistent point write into that table ("could not map filenode",
	// XX000; integration/pgtest.SlotPoison). A catalog change committed
	// after the consistent point gives the slot a catalog snapshot that
	// sees the TRUNCATE for what starts later, and the temporary slot
	// waits for every transaction begun before it: streaming from its
	// consistent point decodes none of the transactions the slot cannot.
	s.healSlot(ctx)
	start := time.Now()
	exp, err := s.exportSnapshot(ctx, fmt.Sprintf("%.40s_sync_%d", slot, s.repl.PID()), nil)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	defer exp.close()
	point := exp.point
	tables, ops, rows, err := s.copyTables(ctx, exp.snapshot, nil, old.Tables)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	exp.close()
	// The snapshot holds what was committed at the consistent point.
	if err := s.waitStandbys(ctx, point); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	ck := Checkpoint{LSN: point, Time: time.Now().UTC(), Tables: tables, SystemID: s.hist.SystemID, Timeline: s.hist.Timeline}
	if err := s.applyAll(ctx, append(ops, kvdriver.Put(s.a.ckptKey, ck.value())), true); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	s.setCheckpoint(ck)
	s.a.log.Info("initial sync done", "tables", len(tables), "rows", rows, "consistent_point", point, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// copyTable copies one table added to the publication while streaming. A
// temporary slot exports a snapshot with consistent point C; the table's
// changes in transactions committed before C are in the copy and are
// skipped in the stream, later ones are applied.
func (s *session) copyTable(ctx context.Context, t tableInfo) error {
	// Creating a slot waits for running transactions to end: keep the
	// main stream's status updates going meanwhile.
	exp, err := s.exportSnapshot(ctx, fmt.Sprintf("%.40s_copy_%d", s.a.cfg.Slot, s.repl.PID()), s.keepalive)
	if err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	defer exp.close()
	point := exp.point
	_, ops, rows, err := s.copyTables(ctx, exp.snapshot, []tableInfo{t}, nil)
	if err != nil {
		return err
	}
	if err := s.waitStandbys(ctx, point); err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	ck := s.ckpt
	ck.SystemID, ck.Timeline = s.hist.SystemID, s.hist.Timeline
	ck.Tables = maps.Clone(s.tables)
	ck.Tables[t.qualified()] = t.shape
	if err := s.applyAll(ctx, append(ops, kvdriver.Put(s.a.ckptKey, ck.value())), true); err != nil {
		return fmt.Errorf("copy table %s: %w", t.qualified(), err)
	}
	s.setCheckpoint(ck)
	s.dec.copiedAt[t.qualified()] = point
	s.a.log.Info("table added to the publication: copied", "table", t.qualified(), "rows", rows, "consistent_point", point)
	return nil
}

// exported is a snapshot a temporary slot exports; it lives until close
// (which drops the slot with its connection).
type exported struct {
	conn     *pgconn.PgConn
	snapshot string
	point    pglogrepl.LSN
}

func (e *exported) close() {
	if e.conn != nil {
		e.conn.Close(context.Background())
		e.conn = nil
	}
}

// exportSnapshot creates a temporary slot named name on a replication
// connection of its own and returns its exported snapshot and consistent
// point. Creating a slot waits for every running transaction to end;
// meanwhile tick (if set) is called every status interval.
func (s *session) exportSnapshot(ctx context.Context, name string, tick func()) (*exported, error) {
	conn, err := pgconn.ConnectConfig(ctx, s.rcfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	type created struct {
		res pglogrepl.CreateReplicationSlotResult
		err error
	}
	done := make(chan created, 1)
	go func() {
		res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT",
		})
		done <- created{res, err}
	}()
	var c created
	for waiting := true; waiting; {
		select {
		case c = <-done:
			waiting = false
		case <-time.After(s.a.cfg.StatusInterval):
			if tick != nil {
				tick()
			}
		}
	}
	if c.err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("create temporary slot: %w", c.err)
	}
	point, err := pglogrepl.ParseLSN(c.res.ConsistentPoint)
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("temporary slot: consistent point %q: %w", c.res.ConsistentPoint, err)
	}
	return &exported{conn: conn, snapshot: c.res.SnapshotName, point: point}, nil
}

// healSlot commits a catalog change (a temporary table created and
// dropped), which makes the snapshot builder of every slot build a new
// catalog snapshot (see initialSync). Without the TEMPORARY privilege
// the sync goes on: a slot left undecodable is then replaced when
// streaming fails on it (undecodable).
func (s *session) healSlot(ctx context.Context) {
	if _, err := s.conn.Exec(ctx, `CREATE TEMPORARY TABLE lenkwerk_catalog_change (); DROP TABLE lenkwerk_catalog_change`); err != nil {
		s.a.log.Warn("initial sync: could not commit a catalog change (grant TEMPORARY on the database to the agent's role); a slot made undecodable by a concurrent TRUNCATE is replaced when streaming fails", "err", err)
	}
}

// copyTables copies tables (nil: every published table in the snapshot)
// from the exported snapshot into the store, and returns the copied table
// names and the operations still to apply (deletes of the keys in the
// tables' key space that match no row), to which the caller appends the
// checkpoint. The tables of previous (the old checkpoint's) that are no
// longer published add every key under their default key prefix
// (/<schema>/<table>) to the key space: their rows are no longer mirrored,
// and the table may be gone from the catalog, primary key and all.
func (s *session) copyTables(ctx context.Context, snapshot string, tables []tableInfo, previous map[string]string) (names map[string]string, rest []kvdriver.Op, rows int, err error) {
	if !snapshotName.MatchString(snapshot) {
		return nil, nil, 0, fmt.Errorf("unexpected snapshot name %q", snapshot)
	}
	tx, err := s.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		return nil, nil, 0, fmt.Errorf("set transaction snapshot: %w", err)
	}
	// The key space: every key a copied table could have; with a full
	// copy also the configured templates (Bagger's keys), so keys of rows
	// deleted while the store was lost or replaced go too.
	var space []*keymap.Template
	if tables == nil {
		if tables, err = publishedTables(ctx, tx, s.a.cfg.Publication); err != nil {
			return nil, nil, 0, err
		}
		space = s.a.mapper.Templates()
	}
	type job struct {
		info tableInfo
		tmpl *keymap.Template
	}
	jobs := make([]job, 0, len(tables))
	names = map[string]string{}
	for _, t := range tables {
		info, err := loadTableInfo(ctx, tx, t)
		if err != nil {
			return nil, nil, 0, err
		}
		tmpl, err := s.a.mapper.Table(info.schema, info.name, info.pk)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("table %s: %w", info.qualified(), err)
		}
		if err := checkIdentity(info.qualified(), tmpl, info.identity, info.identCols); err != nil {
			return nil, nil, 0, err
		}
		if err := keyColumnsExist(ctx, tx, info, tmpl); err != nil {
			return nil, nil, 0, err
		}
		if tmpl.Singleton() && len(info.pk) == 0 {
			return nil, nil, 0, fmt.Errorf("table %s (key %s): a single-key table needs a primary key to find its newest row", info.qualified(), tmpl)
		}
		jobs = append(jobs, job{info, tmpl})
		if s.dec.inTxn {
			// Copied while streaming a transaction: the transaction
			// committed before the snapshot, so its buffered changes to
			// the table are in the copy, and applying them after it
			// would bring back older values.
			s.dec.buf.drop(tmpl.Match)
		}
		space = append(space, tmpl)
		names[info.qualified()] = info.shape
	}
	var retired []string
	for t := range previous {
		if _, ok := names[t]; ok {
			continue
		}
		schema, name, _ := strings.Cut(t, ".")
		retired = append(retired, s.a.cfg.Prefix+"/"+keymap.EscapeSegment(schema)+"/"+keymap.EscapeSegment(name))
	}
	stale, err := s.keySpace(ctx, space, retired)
	if err != nil {
		return nil, nil, 0, err
	}
	buf := newTxnBuffer()
	flush := func(force bool) error {
		if !force && len(buf.ops) < s.lim.ops && buf.bytes < s.lim.bytes {
			return nil
		}
		return s.applyAll(ctx, buf.take(), false)
	}
	for _, j := range jobs {
		cols := j.tmpl.Columns()
		rs, err := tx.Query(ctx, selectSQL(j.info, j.tmpl.Singleton(), cols...))
		if err != nil {
			return nil, nil, 0, fmt.Errorf("copy table %s: %w", j.info.qualified(), err)
		}
		// The key's columns come as their own to_jsonb values, next to the
		// row: parsing every row only to find them was most of the copy's
		// CPU. One map serves every row (Key keeps nothing of it).
		keyRow := make(map[string]json.RawMessage, len(cols))
		for rs.Next() {
			// Raw values are valid until Next: the row's value is copied
			// (the buffer keeps it), the key columns are not.
			raw := rs.RawValues()
			if len(raw) != 1+len(cols) || raw[0] == nil {
				rs.Close()
				return nil, nil, 0, fmt.Errorf("copy table %s: unexpected row of %d values", j.info.qualified(), len(raw))
			}
			for i, c := range cols {
				// NULL (nil) gives Key's "key column is NULL" error,
				// as the JSON null inside the row did.
				keyRow[c] = raw[1+i]
			}
			key, err := j.tmpl.Key(keyRow)
			v := bytes.Clone(raw[0])
			if err == nil {
				err = s.lim.validateEncoded(key, v)
			}
			if err != nil {
				if err := s.rowError(ctx, j.info.qualified(), key, 0, err); err != nil {
					rs.Close()
					return nil, nil, 0, err
				}
				delete(stale, key) // skipped: the store keeps what it has
				continue
			}
			buf.put(key, v)
			delete(stale, key)
			rows++
			if err := flush(false); err != nil {
				rs.Close()
				return nil, nil, 0, err
			}
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return nil, nil, 0, fmt.Errorf("copy table %s: %w", j.info.qualified(), err)
		}
		s.a.mu.Lock()
		s.a.stats.copies++
		s.a.mu.Unlock()
	}
	if err := flush(true); err != nil {
		return nil, nil, 0, err
	}
	keys := make([]string, 0, len(stale))
	for k := range stale {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		buf.del(k)
		if err := flush(false); err != nil {
			return nil, nil, 0, err
		}
	}
	return names, buf.take(), rows, nil
}

// keyColumnsExist refuses a key template column the table lacks, as the
// stream does (newRelation). The copy selects the key columns by name, and
// a system column (xmin, ctid, …) would answer where the row's to_jsonb has
// no such column.
func keyColumnsExist(ctx context.Context, q querier, t tableInfo, tmpl *keymap.Template) error {
	cols := tmpl.Columns()
	if len(cols) == 0 {
		return nil
	}
	var have []string
	err := q.QueryRow(ctx, `SELECT coalesce(array_agg(attname::text), '{}') FROM pg_attribute
WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attname = ANY($2)`, sqlName(t.schema, t.name), cols).Scan(&have)
	if err != nil {
		return fmt.Errorf("table %s: read columns: %w", t.qualified(), err)
	}
	for _, c := range cols {
		if !slices.Contains(have, c) {
			return fmt.Errorf("table %s: key %s uses column %q, which the table does not have", t.qualified(), tmpl, c)
		}
	}
	return nil
}

// keySpace lists the store keys that have the shape of one of the
// templates, or are below one of the prefixes (never the agent's reserved
// keys).
func (s *session) keySpace(ctx context.Context, space []*keymap.Template, prefixes []string) (map[string]struct{}, error) {
	out := map[string]struct{}{}
	for _, p := range prefixes {
		kvs, err := s.list(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			if ours(func(string) bool { return true }, s.a.cfg.Prefix, kv.Key) {
				out[kv.Key] = struct{}{}
			}
		}
	}
	listed := map[string]bool{}
	for _, t := range space {
		p := t.ListPrefix()
		if listed[p] {
			continue
		}
		listed[p] = true
		kvs, err := s.list(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			for _, t := range space {
				if ours(t.Match, s.a.cfg.Prefix, kv.Key) {
					out[kv.Key] = struct{}{}
					break
				}
			}
		}
	}
	return out, nil
}

// ours reports whether key has a template's shape and is not one of the
// agent's reserved keys.
func ours(match func(string) bool, prefix, key string) bool {
	return match(key) && !strings.HasPrefix(key, prefix+"/"+ReservedSegment+"/") && key != prefix+"/"+ReservedSegment
}

// list lists a prefix of the store, retrying through outages like apply.
func (s *session) list(ctx context.Context, prefix string) ([]kvdriver.KV, error) {
	bo := backoff{min: s.a.cfg.MinBackoff, max: min(s.a.cfg.MaxBackoff, s.a.cfg.StatusInterval)}
	start := time.Now()
	for {
		var kvs []kvdriver.KV
		err := s.whileAlive(ctx, func(ctx context.Context) (err error) {
			kvs, _, err = s.a.cfg.Store.List(ctx, prefix)
			return err
		})
		s.a.update(func(st *Status) { st.StoreErr = err })
		if err == nil {
			return kvs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.a.met.errs.WithLabelValues(errorKind(&storeError{err})).Inc()
		if permanent(err) {
			return nil, &storeError{fmt.Errorf("list %s: %w", prefix, err)}
		}
		if time.Since(start) >= s.a.cfg.StoreRetry {
			return nil, &storeError{fmt.Errorf("list %s: store unavailable for %v: %w", prefix, time.Since(start).Round(time.Second), err)}
		}
		d := bo.next()
		s.a.log.Warn("store list failed; retrying", "prefix", prefix, "retry_in", d, "err", err)
		s.keepalive()
		if sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}

// retainedWALWarnEvery spaces the retained-WAL warnings of one slot: the
// condition lasts, and a poll every few seconds would flood the log.
const retainedWALWarnEvery = 5 * time.Minute

// pollTables mirrors tables added to the publication (existing rows
// included), copies again tables whose columns changed (to_jsonb of every
// row changed, though no row change is streamed) and forgets tables removed
// from the publication (their keys stay until a resync).
func (s *session) pollTables(ctx context.Context) error {
	pub, err := publishedTables(ctx, s.conn, s.a.cfg.Publication)
	if err != nil {
		return err
	}
	var retained int64
	if err := s.conn.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1`, s.a.cfg.Slot).Scan(&retained); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read retained WAL of slot %s: %w", s.a.cfg.Slot, err)
	}
	s.a.update(func(st *Status) { st.RetainedWAL = retained })
	if retained > s.a.cfg.RetainedWALWarn && time.Since(s.a.walWarned) >= retainedWALWarnEvery {
		s.a.walWarned = time.Now()
		s.a.log.Warn("replication slot holds back much WAL: is the store keeping up? (bound it with max_slot_wal_keep_size)", "retained_bytes", retained)
	}
	s.pub = map[string]tableInfo{}
	for _, t := range pub {
		s.pub[t.qualified()] = t
	}
	for _, t := range pub {
		shape := s.tables[t.qualified()]
		if shape == t.shape {
			continue
		}
		if shape != "" {
			s.a.log.Info("table columns changed: copying it again", "table", t.qualified())
		}
		if err := s.copyTable(ctx, t); err != nil {
			return err
		}
	}
	for t, shape := range s.tables {
		if _, ok := s.pub[t]; !ok && shape != "" {
			s.a.log.Info("table removed from the publication: no longer mirrored; its keys stay until a resync", "table", t)
			s.tables[t] = "" // retired: the next initial sync deletes its keys
		}
	}
	return nil
}

func deref(p *string) string {
	if p == nil {
		return "none"
	}
	return *p
}
