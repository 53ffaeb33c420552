package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

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
			// Copied at a transaction's commit (admitTables): the
			// transaction committed before the snapshot, so its
			// buffered changes to the table are in the copy, and
			// applying them after it would bring back older values.
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
		return s.submit(ctx, batch{ops: buf.take()})
	}
	for _, j := range jobs {
		cols := j.tmpl.Columns()
		rs, err := tx.Query(ctx, selectSQL(j.info, j.tmpl.Singleton(), cols...))
		if err != nil {
			return nil, nil, 0, fmt.Errorf("copy table %s: %w", j.info.qualified(), err)
		}
		// The key's columns come as their own to_jsonb values, next to the
		// row, so the copy never parses a row to find them. One slice
		// serves every row (KeyValues keeps nothing of it).
		keyVals := make([]json.RawMessage, len(cols))
		for rs.Next() {
			// Raw values are valid until Next: the row's value is copied
			// (the buffer keeps it), the key columns are not.
			raw := rs.RawValues()
			if len(raw) != 1+len(cols) || raw[0] == nil {
				rs.Close()
				return nil, nil, 0, fmt.Errorf("copy table %s: unexpected row of %d values", j.info.qualified(), len(raw))
			}
			for i := range cols {
				// NULL (nil) gives the "key column is NULL" error, as
				// the JSON null inside the row did.
				keyVals[i] = raw[1+i]
			}
			key, err := j.tmpl.KeyValues(keyVals)
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
		s.a.met.tableCopies.Inc()
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
