package converge

import (
	"context"
	"fmt"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// DB is the database Check reads: a *pgx.Conn, a *pgxpool.Pool, or a URL.
type DB interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// URL is a DB given by its connection URL. Each check opens a connection of
// its own and closes it, so a Wait survives database restarts.
type URL string

// BeginTx connects and begins a transaction; ending the transaction closes
// the connection.
func (u URL) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	conn, err := pgx.Connect(ctx, string(u))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", kvdriver.Redact(string(u)), err)
	}
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return connTx{Tx: tx, conn: conn}, nil
}

// connTx closes its connection when the transaction ends.
type connTx struct {
	pgx.Tx
	conn *pgx.Conn
}

func (t connTx) Commit(ctx context.Context) error {
	defer t.conn.Close(context.Background())
	return t.Tx.Commit(ctx)
}

func (t connTx) Rollback(ctx context.Context) error {
	defer t.conn.Close(context.Background())
	return t.Tx.Rollback(ctx)
}

// publishedTable is one table of the publication.
type publishedTable struct {
	schema, name string
	rowFilter    *string // the publication's WHERE clause, if any
	partitioned  bool    // published via its partition root: read every partition
	pk           []string
}

// sessionSettings make to_jsonb produce what the agent writes: timestamps in
// UTC and the server defaults for every other setting that changes a value's
// text (the agent's walsender runs with them).
var sessionSettings = []string{
	`SET LOCAL TimeZone = 'UTC'`,
	`SET LOCAL IntervalStyle = 'postgres'`,
	`SET LOCAL extra_float_digits = 1`,
	`SET LOCAL bytea_output = 'hex'`,
}

// expected reads every published row in one snapshot and maps it to its key
// and to_jsonb value.
func expected(ctx context.Context, db DB, mapper *keymap.Mapper, pub string) (map[string][]byte, error) {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("converge: begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	for _, s := range sessionSettings {
		if _, err := tx.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("converge: %s: %w", s, err)
		}
	}
	tables, err := publishedTables(ctx, tx, pub)
	if err != nil {
		return nil, err
	}
	want := map[string][]byte{}
	for _, t := range tables {
		if err := t.rows(ctx, tx, mapper, want); err != nil {
			return nil, err
		}
	}
	return want, nil
}

func publishedTables(ctx context.Context, tx pgx.Tx, pub string) ([]publishedTable, error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, pub).Scan(&exists); err != nil {
		return nil, fmt.Errorf("converge: look up publication %q: %w", pub, err)
	}
	if !exists {
		return nil, fmt.Errorf("converge: publication %q does not exist", pub)
	}
	rows, err := tx.Query(ctx, `
		SELECT pt.schemaname::text, pt.tablename::text, pt.rowfilter, c.relkind = 'p',
		       coalesce((SELECT array_agg(a.attname::text ORDER BY k.n)
		                 FROM pg_index i
		                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1
		ORDER BY 1, 2`, pub)
	if err != nil {
		return nil, fmt.Errorf("converge: list tables of publication %q: %w", pub, err)
	}
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (publishedTable, error) {
		var t publishedTable
		err := r.Scan(&t.schema, &t.name, &t.rowFilter, &t.partitioned, &t.pk)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("converge: list tables of publication %q: %w", pub, err)
	}
	return tables, nil
}

// rows adds the table's expected keys and values to want.
func (t publishedTable) rows(ctx context.Context, tx pgx.Tx, mapper *keymap.Mapper, want map[string][]byte) error {
	name := t.schema + "." + t.name
	tmpl, err := mapper.Table(t.schema, t.name, t.pk)
	if err != nil {
		return fmt.Errorf("converge: %s: %w", name, err)
	}
	// ONLY: an inheritance child (storage.dimension under time_bound) is
	// published as a table of its own; a partition root reads its partitions.
	from := "ONLY " + pgx.Identifier{t.schema, t.name}.Sanitize()
	if t.partitioned {
		from = pgx.Identifier{t.schema, t.name}.Sanitize()
	}
	// r.*, not r: a column named r would win over the whole row.
	q := "SELECT to_jsonb(r.*)::text FROM " + from + " AS r"
	if t.rowFilter != nil {
		q += " WHERE " + *t.rowFilter
	}
	if tmpl.Singleton() {
		// One key for the whole table: the newest generation is the row with
		// the greatest primary key.
		if len(t.pk) == 0 {
			return fmt.Errorf("converge: %s: a key template without columns needs a primary key to pick the newest row", name)
		}
		q += " ORDER BY "
		for i, c := range t.pk {
			if i > 0 {
				q += ", "
			}
			q += "r." + pgx.Identifier{c}.Sanitize() + " DESC" // qualified: the output column is named to_jsonb
		}
		q += " LIMIT 1"
	}
	rows, err := tx.Query(ctx, q)
	if err != nil {
		return fmt.Errorf("converge: read %s: %w", name, err)
	}
	defer rows.Close()
	mine := map[string]bool{}
	for rows.Next() {
		var text string
		if err := rows.Scan(&text); err != nil {
			return fmt.Errorf("converge: read %s: %w", name, err)
		}
		v := []byte(text)
		key, err := rowKey(tmpl, v)
		if err != nil {
			return fmt.Errorf("converge: %s: row %s: %w", name, v, err)
		}
		if _, dup := want[key]; dup {
			if mine[key] {
				return fmt.Errorf("converge: %s: two rows map to key %q", name, key)
			}
			return fmt.Errorf("converge: %s: key %q is also the key of a row of another table", name, key)
		}
		mine[key] = true
		want[key] = v
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("converge: read %s: %w", name, err)
	}
	return nil
}
