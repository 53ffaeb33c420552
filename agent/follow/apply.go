package follow

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// order sorts one revision's ops: deletes first, children before parents,
// then puts, parents before children.
func order(ops []op) {
	sort.SliceStable(ops, func(i, j int) bool {
		a, b := ops[i], ops[j]
		if a.typ != b.typ {
			return a.typ == kvdriver.OpDelete
		}
		if a.t.rank != b.t.rank {
			if a.typ == kvdriver.OpDelete {
				return a.t.rank > b.t.rank
			}
			return a.t.rank < b.t.rank
		}
		return a.key < b.key
	})
}

// dataError reports PostgreSQL refusing the data itself (SQLSTATE classes
// 22 data exception and 23 integrity constraint violation): applying the
// same ops again cannot succeed, unlike a lost connection.
func dataError(err error) (*pgconn.PgError, bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23") {
		return pgErr, true
	}
	return nil, false
}

// exec runs one op. replace deletes a put's row before writing it.
func exec(ctx context.Context, tx pgx.Tx, o op, replace bool) error {
	t := o.t
	var err error
	switch {
	case t.tmpl.Singleton():
		// The table holds the key's one row: a put replaces its rows, a
		// delete empties it.
		if _, err = tx.Exec(ctx, t.clearSQL); err == nil && o.typ == kvdriver.OpPut {
			_, err = tx.Exec(ctx, t.insertSQL, string(o.value))
		}
	case o.typ == kvdriver.OpDelete:
		_, err = tx.Exec(ctx, t.deleteSQL, string(o.ident))
	default:
		if replace {
			if _, err = tx.Exec(ctx, t.deleteSQL, string(o.ident)); err != nil {
				break
			}
		}
		_, err = tx.Exec(ctx, t.upsertSQL, string(o.value))
	}
	if err != nil {
		return fmt.Errorf("%s %s (table %s): %w", o.typ, o.key, t.name, err)
	}
	return nil
}

// applyRevision applies one store revision's ops in tx: in dependency order,
// else with every touched row deleted first, else op by op, skipping (and
// reporting through skip) the ops PostgreSQL refuses as invalid data. Any
// other error is returned; tx is then unusable.
func applyRevision(ctx context.Context, tx pgx.Tx, ops []op, skip func(op, error)) error {
	order(ops)
	try := func(run func(pgx.Tx) error) (bool, error) {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return false, fmt.Errorf("savepoint: %w", err)
		}
		if err := run(sp); err != nil {
			if _, ok := dataError(err); !ok {
				return false, err
			}
			if rerr := sp.Rollback(ctx); rerr != nil {
				return false, fmt.Errorf("rollback to savepoint after %v: %w", err, rerr)
			}
			return false, nil
		}
		if err := sp.Commit(ctx); err != nil {
			return false, fmt.Errorf("release savepoint: %w", err)
		}
		return true, nil
	}
	// In order.
	if ok, err := try(func(sp pgx.Tx) error {
		for _, o := range ops {
			if err := exec(ctx, sp, o, false); err != nil {
				return err
			}
		}
		return nil
	}); ok || err != nil {
		return err
	}
	// Every touched row out of the way first (e.g. two rows swapping a
	// unique value), children before parents.
	if ok, err := try(func(sp pgx.Tx) error {
		del := make([]op, 0, len(ops))
		for _, o := range ops {
			if !o.t.tmpl.Singleton() {
				del = append(del, op{typ: kvdriver.OpDelete, key: o.key, t: o.t, ident: o.ident})
			}
		}
		order(del)
		for _, o := range del {
			if err := exec(ctx, sp, o, false); err != nil {
				return err
			}
		}
		for _, o := range ops {
			if o.typ == kvdriver.OpPut || o.t.tmpl.Singleton() {
				if err := exec(ctx, sp, o, false); err != nil {
					return err
				}
			}
		}
		return nil
	}); ok || err != nil {
		return err
	}
	// Op by op: what PostgreSQL refuses keeps its previous row.
	for _, o := range ops {
		var failed error
		ok, err := try(func(sp pgx.Tx) error {
			failed = exec(ctx, sp, o, false)
			return failed
		})
		if err != nil {
			return err
		}
		if !ok {
			skip(o, failed)
		}
	}
	return nil
}

// saveCheckpoint records the store revision the copy is at, in the
// transaction that brought it there.
func saveCheckpoint(ctx context.Context, tx pgx.Tx, prefix, store string, rev int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO lenkwerk.follow_state (prefix, store, revision, updated) VALUES ($1, $2, $3, now())
		ON CONFLICT (prefix) DO UPDATE SET store = excluded.store, revision = excluded.revision, updated = excluded.updated`, prefix, store, rev)
	if err != nil {
		return fmt.Errorf("save checkpoint (revision %d): %w", rev, err)
	}
	return nil
}

// loadCheckpoint reads the revision the copy is at, for prefix.
func loadCheckpoint(ctx context.Context, conn *pgx.Conn, prefix string) (store string, rev int64, ok bool, err error) {
	err = conn.QueryRow(ctx, `SELECT store, revision FROM lenkwerk.follow_state WHERE prefix = $1`, prefix).Scan(&store, &rev)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("read lenkwerk.follow_state: %w", err)
	}
	return store, rev, true, nil
}
