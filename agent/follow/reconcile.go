package follow

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// reconcile lists the store and makes the local copy equal to the listing
// in one transaction, with the listing's revision as checkpoint, which it
// returns.
func (f *Follower) reconcile(ctx context.Context, conn *pgx.Conn, r *router) (int64, error) {
	kvs, rev, err := f.cfg.Store.List(ctx, f.listPrefix())
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", f.listPrefix(), err)
	}
	evs := make([]kvdriver.Event, len(kvs))
	for i, kv := range kvs {
		evs[i] = kvdriver.Event{Type: kvdriver.OpPut, Key: kv.Key, Value: kv.Value, Revision: rev}
	}
	// A key the store holds but whose value cannot be applied keeps its
	// local row, as it does when the watch brings such a value.
	stored := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		stored[kv.Key] = true
	}
	puts := f.routeAll(r, evs)
	listed := make(map[string]op, len(puts))
	for _, o := range puts {
		listed[o.key] = o
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	var ops []op
	unchanged := 0
	for _, t := range r.tables {
		local, err := localRows(ctx, tx, t)
		if err != nil {
			return 0, err
		}
		if t.tmpl.Singleton() {
			key := t.tmpl.String()
			o, inStore := listed[key]
			switch {
			case inStore && len(local) == 1 && sameJSON(local[0].value, o.value):
				unchanged++
				delete(listed, key)
			case !inStore && !stored[key] && len(local) > 0:
				ops = append(ops, op{typ: kvdriver.OpDelete, key: key, t: t})
			}
			continue
		}
		for _, row := range local {
			if row.err != nil {
				f.logOnce(slog.LevelError, "row:"+t.name+string(row.value), "follow: local row has no key (a key column is NULL); it stays", "table", t.name, "row", shorten(row.value), "err", row.err)
				continue
			}
			if o, inStore := listed[row.key]; inStore && o.t == t {
				if sameJSON(row.value, o.value) {
					unchanged++
					delete(listed, row.key)
				}
				continue
			}
			if stored[row.key] {
				continue
			}
			ident, err := keyValues(t, row.key)
			if err != nil {
				return 0, err
			}
			ops = append(ops, op{typ: kvdriver.OpDelete, key: row.key, t: t, ident: ident})
		}
	}
	for _, o := range puts {
		if _, ok := listed[o.key]; ok {
			ops = append(ops, o)
		}
	}
	f.pending = nil
	how, err := applyRevision(ctx, tx, ops, f.refuse(func(string) int64 { return rev }))
	if err != nil {
		return 0, fmt.Errorf("reconcile with revision %d: %w", rev, err)
	}
	if how != inOrder && how != noChanges {
		f.log.Info("follow: reconcile applied "+how, "revision", rev)
	}
	cp := f.checkpointFor(rev)
	if err := saveCheckpoint(ctx, tx, f.cfg.Prefix, f.cfg.StoreName, cp); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit reconcile with revision %d: %w", rev, err)
	}
	f.revision.Store(cp)
	f.npending.Store(int64(len(f.pending)))
	f.log.Info("follow: local copy reconciled with the store", "revision", rev, "keys", len(kvs), "unchanged", unchanged, "changes", len(ops))
	return rev, nil
}

// localRow is a local row as to_jsonb gives it, with its store key.
type localRow struct {
	key   string
	value []byte
	err   error // the row has no key
}

func localRows(ctx context.Context, tx pgx.Tx, t *table) ([]localRow, error) {
	rows, err := tx.Query(ctx, t.selectSQL)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	out := make([]localRow, len(vals))
	for i, v := range vals {
		out[i].value = []byte(v)
		var row map[string]json.RawMessage
		if err := json.Unmarshal(out[i].value, &row); err != nil {
			return nil, fmt.Errorf("read %s: %w", t.name, err)
		}
		out[i].key, out[i].err = t.tmpl.Key(row)
	}
	return out, nil
}

// sameJSON compares two JSON documents by meaning; the store's value is
// to_jsonb's text, but a driver may normalise it.
func sameJSON(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return equal(x, y)
}

func equal(x, y any) bool {
	switch a := x.(type) {
	case map[string]any:
		b, ok := y.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := y.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !equal(a[i], b[i]) {
				return false
			}
		}
		return true
	default:
		return x == y
	}
}
