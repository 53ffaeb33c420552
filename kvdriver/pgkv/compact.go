package pgkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Compact implements kvdriver.Driver: it discards the change log at and
// before rev. Compacting at or below the current compaction point does
// nothing; rev beyond the store revision is an error.
func (s *Driver) Compact(ctx context.Context, rev int64) error {
	if rev <= 0 {
		return nil
	}
	var marked int64
	err := s.pool.QueryRow(ctx, s.q.compactMark, rev).Scan(&marked)
	if errors.Is(err, pgx.ErrNoRows) {
		head, _, err := s.head(ctx)
		if err != nil {
			return err
		}
		if rev > head {
			return fmt.Errorf("beyond the store revision %d", head)
		}
		return nil // already compacted that far
	}
	if err != nil {
		return s.translate(err)
	}
	if _, err := s.pool.Exec(ctx, s.q.compactDelete, rev); err != nil {
		// The marker holds: the rows are unreachable and go with the next
		// compaction.
		return fmt.Errorf("delete history: %w", s.translate(err))
	}
	return nil
}

// autoCompact bounds the change log by HistoryRevisions and HistoryAge.
// A store that may not compact (a reader role, a hot standby) stops
// trying after the first refusal.
func (s *Driver) autoCompact() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		err := s.compactOnce(s.ctx)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.InsufficientPrivilege || pgErr.Code == pgerrcode.ReadOnlySQLTransaction) {
			return // a reader role, or a hot standby: never ours to compact
		}
	}
}

// compactOnce compacts to the bound the configuration sets, if any.
func (s *Driver) compactOnce(ctx context.Context) error {
	var head, compacted, target int64
	age := s.cfg.HistoryAge
	if err := s.pool.QueryRow(ctx, s.q.compactTarget, s.cfg.HistoryRevisions, age).Scan(&head, &compacted, &target); err != nil {
		return err
	}
	if target <= compacted {
		return nil
	}
	var marked int64
	err := s.pool.QueryRow(ctx, s.q.compactMark, target).Scan(&marked)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // another store compacted meanwhile
	}
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, s.q.compactDelete, target)
	return err
}
