package pgkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Writes go through one goroutine per store (group commit): it takes the
// batches that are waiting and commits them in one transaction, one
// kv_apply each, so each gets its own consecutive revision. Revisions are
// still assigned under kv_meta's lock, which serializes writers of other
// stores too; within a store, concurrent callers no longer queue for that
// lock one commit at a time but share commits. A lone batch is one
// statement in an implicit transaction, as before.
const (
	maxGroupBatches = 64
	maxGroupOps     = DefaultMaxBatchOps
)

// writeReq is one batch waiting for the store's writer.
type writeReq struct {
	ctx     context.Context
	keys    []string
	values  [][]byte
	reqKeys []string
	reqRevs []int64
	done    chan writeRes // buffered: the writer never blocks
}

type writeRes struct {
	rev int64
	err error
}

// conflictCode is the SQLSTATE kv_apply raises when a Require does not
// hold (migration 000002).
const conflictCode = "LWK01"

// apply runs kv_apply through the store's writer: one revision, the
// NOTIFY sent at its commit. A nil value deletes. If ctx ends while the
// batch is being committed, apply returns ctx's error and the batch may
// still commit, as with any write whose reply is lost.
func (s *Driver) apply(ctx context.Context, keys []string, values [][]byte, reqKeys []string, reqRevs []int64) (int64, error) {
	if s.closed.Load() {
		return 0, kvdriver.ErrClosed
	}
	r := &writeReq{ctx: ctx, keys: keys, values: values, reqKeys: reqKeys, reqRevs: reqRevs, done: make(chan writeRes, 1)}
	select {
	case s.writes <- r:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.writerDone:
		return 0, kvdriver.ErrClosed
	}
	select {
	case res := <-r.done:
		return res.rev, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.writerDone:
		select {
		case res := <-r.done:
			return res.rev, res.err
		default:
			return 0, kvdriver.ErrClosed
		}
	}
}

// writeLoop is the store's writer.
func (s *Driver) writeLoop() {
	defer s.wg.Done()
	defer close(s.writerDone)
	defer func() {
		for {
			select {
			case r := <-s.writes:
				r.done <- writeRes{err: kvdriver.ErrClosed}
			default:
				return
			}
		}
	}()
	for {
		var first *writeReq
		select {
		case <-s.ctx.Done():
			return
		case first = <-s.writes:
		}
		group, ops := []*writeReq{first}, len(first.keys)
	collect:
		for len(group) < maxGroupBatches && ops < maxGroupOps {
			select {
			case r := <-s.writes:
				group, ops = append(group, r), ops+len(r.keys)
			default:
				break collect
			}
		}
		s.commitGroup(group)
	}
}

// commitGroup commits the group's batches, each with its own revision. A
// batch that fails on its own (a Require that does not hold, a value the
// server refuses) gets its error and the others are committed without it:
// the outcome is that of applying them one after another.
func (s *Driver) commitGroup(group []*writeReq) {
	for {
		live := group[:0]
		for _, r := range group {
			if err := r.ctx.Err(); err != nil {
				r.done <- writeRes{err: err}
				continue
			}
			live = append(live, r)
		}
		group = live
		if len(group) == 0 {
			return
		}
		revs, failed, err := s.runGroup(group)
		switch {
		case err == nil:
			for i, r := range group {
				r.done <- writeRes{rev: revs[i]}
			}
			return
		case failed < 0:
			for _, r := range group {
				r.done <- writeRes{err: err}
			}
			return
		}
		group[failed].done <- writeRes{err: err}
		group = append(group[:failed:failed], group[failed+1:]...)
	}
}

// runGroup commits the group, retrying serialization failures. failed is
// the index of the batch an error belongs to, or -1 if it is the group's.
func (s *Driver) runGroup(group []*writeReq) (revs []int64, failed int, err error) {
	for attempt := 1; ; attempt++ {
		revs, failed, err = s.tryGroup(group)
		if err == nil {
			return revs, -1, nil
		}
		// Under REPEATABLE READ or SERIALIZABLE (a server or role default)
		// a writer that waited for the revision lock fails with a
		// serialization error instead of reading the new revision.
		// Nothing committed: retry.
		var pgErr *pgconn.PgError
		var fe flushError
		if !errors.As(err, &pgErr) || errors.As(err, &fe) {
			return nil, -1, s.translate(err)
		}
		if (pgErr.Code == pgerrcode.SerializationFailure || pgErr.Code == pgerrcode.DeadlockDetected) && attempt < maxApplyAttempts {
			t := time.NewTimer(time.Duration(min(attempt, 20)) * time.Millisecond)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return nil, -1, kvdriver.ErrClosed
			case <-t.C:
			}
			continue
		}
		if failed >= 0 && pgErr.Code == conflictCode {
			return nil, failed, fmt.Errorf("%w: %s", kvdriver.ErrConflict, pgErr.Message)
		}
		return nil, failed, s.translate(err)
	}
}

// tryGroup is one attempt of runGroup.
func (s *Driver) tryGroup(group []*writeReq) (revs []int64, failed int, err error) {
	ctx := s.ctx
	channel := s.cfg.channel()
	revs = make([]int64, len(group))
	if len(group) == 1 {
		r := group[0]
		rev, failed, err := s.applyAndSync(ctx, r)
		if err != nil {
			return nil, failed, err
		}
		revs[0] = rev
		return revs, -1, nil
	}
	tx, err := s.wpool.Begin(ctx)
	if err != nil {
		return nil, -1, err
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = tx.Rollback(rctx)
		}
	}()
	b := &pgx.Batch{}
	for _, r := range group {
		b.Queue(s.q.applyOne, r.keys, r.values, channel, r.reqKeys, r.reqRevs)
	}
	br := tx.SendBatch(ctx, b)
	synced := true
	for i := range group {
		var pending *string
		if err = br.QueryRow().Scan(&revs[i], &pending); err != nil {
			_ = br.Close()
			return nil, i, err
		}
		synced = synced && pending != nil && *pending == "no"
	}
	if err = br.Close(); err != nil {
		return nil, -1, err
	}
	if err = tx.Commit(ctx); err != nil {
		return nil, -1, err
	}
	if synced {
		// kv_apply was alone: the commit flushed, and notified.
		s.noteDurable(revs[len(revs)-1])
		return revs, -1, nil
	}
	// The commit did not wait for its flush (see durable.go).
	if err := s.syncAfterCommit(ctx); err != nil {
		return nil, -1, err
	}
	return revs, -1, nil
}

// flushError: the batches committed, but kv_sync failed, so they are not
// known to be durable. Like a lost reply to a commit, it is not retried.
type flushError struct{ err error }

func (e flushError) Error() string {
	return fmt.Sprintf("pgkv: committed, but the flush after the commit failed: %v", e.err)
}

func (e flushError) Unwrap() error { return e.err }

// applyAndSync commits one batch with kv_apply and, if kv_apply committed
// asynchronously (another writer was waiting for the revision lock), runs
// kv_sync, which flushes the WAL past that commit and notifies. A kv_apply
// that was alone committed synchronously and notified itself. failed is 0
// if the error is kv_apply's.
func (s *Driver) applyAndSync(ctx context.Context, r *writeReq) (rev int64, failed int, err error) {
	var pending *string
	if err := s.wpool.QueryRow(ctx, s.q.applyOne, r.keys, r.values, s.cfg.channel(), r.reqKeys, r.reqRevs).Scan(&rev, &pending); err != nil {
		return 0, 0, err
	}
	if pending != nil && *pending == "no" {
		s.noteDurable(rev)
		return rev, -1, nil
	}
	if err := s.syncAfterCommit(ctx); err != nil {
		return 0, -1, err
	}
	return rev, -1, nil
}

// syncAfterCommit runs kv_sync after a commit that did not wait for its
// flush: it flushes the WAL past that commit and notifies. Its error is a
// flushError: the commit stands, but is not known to be durable.
func (s *Driver) syncAfterCommit(ctx context.Context) error {
	var head int64
	if err := s.wpool.QueryRow(ctx, s.q.sync, s.cfg.channel()).Scan(&head); err != nil {
		return flushError{err: err}
	}
	s.noteDurable(head)
	return nil
}
