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

// How applyRevision applied a revision.
const (
	inOrder       = "in order"
	replaced      = "with every touched row deleted first"
	opByOp        = "op by op"
	opByOpChecked = "op by op, checking deferred constraints after each"
	noChanges     = "no changes"
)

// checkDeferred checks the deferred constraints (dimension ordinality,
// index_field's key) now, inside the revision's savepoint, rather than at
// commit, where a violation would fail the whole response again and again;
// then defers them again for the next revision.
func checkDeferred(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, "SET CONSTRAINTS ALL IMMEDIATE"); err != nil {
		return fmt.Errorf("check deferred constraints: %w", err)
	}
	if _, err := tx.Exec(ctx, "SET CONSTRAINTS ALL DEFERRED"); err != nil {
		return fmt.Errorf("defer constraints: %w", err)
	}
	return nil
}

// applyRevision applies one store revision's ops in tx: in dependency order,
// else with every touched row deleted first, else op by op, skipping (and
// reporting through skip) the ops PostgreSQL refuses as invalid data, else
// (the ops together break a deferred constraint) op by op checking the
// deferred constraints after each. Any other error is returned; tx is then
// unusable. It says how it applied the revision.
func applyRevision(ctx context.Context, tx pgx.Tx, ops []op, skip func(op, error)) (string, error) {
	if len(ops) == 0 {
		return noChanges, nil
	}
	order(ops)
	// try runs in a savepoint; a data error rolls it back and is returned
	// as failed, any other error as err.
	try := func(run func(pgx.Tx) error) (failed, err error) {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return nil, fmt.Errorf("savepoint: %w", err)
		}
		if err := run(sp); err != nil {
			if _, ok := dataError(err); !ok {
				return nil, err
			}
			if rerr := sp.Rollback(ctx); rerr != nil {
				return nil, fmt.Errorf("rollback to savepoint after %v: %w", err, rerr)
			}
			return err, nil
		}
		if err := sp.Commit(ctx); err != nil {
			return nil, fmt.Errorf("release savepoint: %w", err)
		}
		return nil, nil
	}
	failed, err := try(func(sp pgx.Tx) error {
		for _, o := range ops {
			if err := exec(ctx, sp, o, false); err != nil {
				return err
			}
		}
		return checkDeferred(ctx, sp)
	})
	if err != nil || failed == nil {
		return inOrder, err
	}
	// Every touched row out of the way first (e.g. two rows swapping a
	// unique value), children before parents.
	failed, err = try(func(sp pgx.Tx) error {
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
		return checkDeferred(ctx, sp)
	})
	if err != nil || failed == nil {
		return replaced, err
	}
	// Op by op: what PostgreSQL refuses keeps its previous row. With
	// check, each op must also leave the deferred constraints satisfied:
	// the last resort when the ops together break them (e.g. a listing
	// holding two dimensions at one ordinality).
	byOp := func(check bool) (failed, err error) {
		var refusedOps []op
		var refusals []error
		failed, err = try(func(outer pgx.Tx) error {
			for _, o := range ops {
				sp, err := outer.Begin(ctx)
				if err != nil {
					return fmt.Errorf("savepoint: %w", err)
				}
				err = exec(ctx, sp, o, false)
				if err == nil && check {
					err = checkDeferred(ctx, sp)
				}
				if err != nil {
					if _, ok := dataError(err); !ok {
						return err
					}
					if rerr := sp.Rollback(ctx); rerr != nil {
						return fmt.Errorf("rollback to savepoint after %v: %w", err, rerr)
					}
					refusedOps, refusals = append(refusedOps, o), append(refusals, err)
					continue
				}
				if err := sp.Commit(ctx); err != nil {
					return fmt.Errorf("release savepoint: %w", err)
				}
			}
			return checkDeferred(ctx, outer)
		})
		if err == nil && failed == nil {
			for i, o := range refusedOps {
				skip(o, refusals[i])
			}
		}
		return failed, err
	}
	if failed, err = byOp(false); err != nil || failed == nil {
		return opByOp, err
	}
	if failed, err = byOp(true); err != nil {
		return opByOpChecked, err
	}
	if failed != nil {
		// Cannot happen: every op that was kept left the constraints
		// satisfied.
		return opByOpChecked, fmt.Errorf("constraints broken after checking each change: %w", failed)
	}
	return opByOpChecked, nil
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
