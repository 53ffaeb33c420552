package pgjson

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrGeneratedColumn is returned (wrapped, naming table and columns) by
// CheckColumns for a relation with generated columns that pgoutput does not
// send (PostgreSQL before 18, or a publication without
// publish_generated_columns): to_jsonb(row) has them, so no row of that
// table can be encoded equal to it.
var ErrGeneratedColumn = errors.New("generated columns are not replicated")

// CheckColumns compares the columns pgoutput sent for relation relid (from
// its Relation message) with the relation's attributes in the catalog and
// fails, naming them, if generated columns are missing. Other differences
// are not reported: the catalog may be ahead of the stream after DDL.
func CheckColumns(ctx context.Context, q Querier, relid uint32, cols []Column) error {
	rows, err := q.Query(ctx, `SELECT attrelid::pg_catalog.regclass::text, attname FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated <> '' ORDER BY attnum`, relid)
	if err != nil {
		return fmt.Errorf("pgjson: read columns of relation %d: %w", relid, err)
	}
	defer rows.Close()
	sent := make(map[string]bool, len(cols))
	for _, c := range cols {
		sent[c.Name] = true
	}
	var table string
	var missing []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&table, &name); err != nil {
			return fmt.Errorf("pgjson: read columns of relation %d: %w", relid, err)
		}
		if !sent[name] {
			missing = append(missing, fmt.Sprintf("%q", name))
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pgjson: read columns of relation %d: %w", relid, err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("pgjson: table %s: %w: %s (to_jsonb has them, pgoutput does not send them)", table, ErrGeneratedColumn, strings.Join(missing, ", "))
	}
	return nil
}
