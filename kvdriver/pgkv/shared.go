package pgkv

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// sharedPool is the store's read connection: a pool of one, shared by
// Get, List, the watches' reads, compaction and the listener. The listener
// holds it only while nobody else wants it: every use first interrupts the
// listener's wait (see listener.enter), and the listener takes it back
// once all users have left. Notifications that arrive while a query runs
// are handled by the connection's OnNotification hook, and those that
// arrive while it sits idle in the pool wait in its socket for the
// listener, so sharing loses none.
type sharedPool struct {
	pool *pgxpool.Pool
	l    *listener
}

func (p *sharedPool) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	p.l.enter()
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		p.l.leave()
		return nil, err
	}
	return c, nil
}

func (p *sharedPool) release(c *pgxpool.Conn) {
	c.Release()
	p.l.leave()
}

func (p *sharedPool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		p.release(c)
		return nil, err
	}
	return &sharedRows{Rows: rows, release: func() { p.release(c) }}, nil
}

func (p *sharedPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c, err := p.acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	return sharedRow{row: c.QueryRow(ctx, sql, args...), release: func() { p.release(c) }}
}

func (p *sharedPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := p.acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer p.release(c)
	return c.Exec(ctx, sql, args...)
}

type sharedRows struct {
	pgx.Rows
	release func()
	done    bool
}

func (r *sharedRows) Close() {
	r.Rows.Close()
	if !r.done {
		r.done = true
		r.release()
	}
}

type sharedRow struct {
	row     pgx.Row
	release func()
}

func (r sharedRow) Scan(dest ...any) error {
	defer r.release()
	return r.row.Scan(dest...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
