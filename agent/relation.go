package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// relation is what the agent knows of one published table: its columns as
// the last pgoutput Relation message described them (pgoutput carries no
// DDL; every ADD/DROP COLUMN or type change arrives as a new Relation
// message before the first row that uses it) and its key template.
type relation struct {
	id        uint32
	schema    string
	name      string
	qualified string // schema.table, the name templates and checkpoints use
	cols      []pgjson.Column
	enc       *pgjson.Encoder
	identity  byte // pg_class.relreplident: 'd', 'n', 'f', 'i'
	tmpl      *keymap.Template
	keyCols   []int    // positions in cols of tmpl.Columns()
	pk        []string // primary key columns in key order
}

// tableInfo is a table's catalog entry.
type tableInfo struct {
	schema, name string
	// From the publication (publishedTables):
	rowFilter   *string // the publication's WHERE for the table
	partitioned bool    // a partition root: read its partitions too
	shape       string  // hash of the columns, their types and the row filter
	// From the table (loadTableInfo):
	identity  byte
	pk        []string // primary key columns, key order
	identCols []string // replica identity index columns, key order
}

func (t tableInfo) qualified() string { return t.schema + "." + t.name }

// sqlName is the quoted schema.table.
func sqlName(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var errNoTable = errors.New("table not found")

const tableInfoSQL = `
SELECT c.relreplident::text,
  coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
  coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = c.oid AND i.indisreplident), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`

// loadTableInfo adds the table's identity and keys to t.
func loadTableInfo(ctx context.Context, q querier, t tableInfo) (tableInfo, error) {
	var ident string
	err := q.QueryRow(ctx, tableInfoSQL, t.schema, t.name).Scan(&ident, &t.pk, &t.identCols)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("table %s: %w", t.qualified(), errNoTable)
	}
	if err != nil {
		return t, fmt.Errorf("table %s: read catalog: %w", t.qualified(), err)
	}
	t.identity = ident[0]
	if t.identity == 'd' {
		t.identCols = t.pk
	}
	return t, nil
}

const publishedSQL = `
SELECT pt.schemaname::text, pt.tablename::text, pt.rowfilter, c.relkind = 'p',
  md5(coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
      || coalesce(' WHERE ' || pt.rowfilter, ''))
FROM pg_publication_tables pt
JOIN pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
WHERE pt.pubname = $1
ORDER BY 1, 2`

// publishedTables lists the publication's tables, sorted, with their row
// filters and shapes.
func publishedTables(ctx context.Context, q querier, publication string) ([]tableInfo, error) {
	rows, err := q.Query(ctx, publishedSQL, publication)
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	var out []tableInfo
	for rows.Next() {
		var t tableInfo
		if err := rows.Scan(&t.schema, &t.name, &t.rowFilter, &t.partitioned, &t.shape); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	var exists bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look up publication %s: %w", publication, err)
	}
	if !exists {
		return nil, fmt.Errorf("publication %s does not exist (run lenkwerk migrate)", publication)
	}
	return out, nil
}

// checkIdentity refuses a table whose deletes and key-changing updates would
// not carry the key columns: the key must be built from the old row.
func checkIdentity(table string, tmpl *keymap.Template, identity byte, identCols []string) error {
	if tmpl.Singleton() || identity == 'f' {
		return nil
	}
	if identity == 'n' {
		return fmt.Errorf("table %s (key %s) has REPLICA IDENTITY NOTHING: deletes and key changes cannot be mirrored; set REPLICA IDENTITY FULL", table, tmpl)
	}
	var missing []string
	for _, c := range tmpl.Columns() {
		if !slices.Contains(identCols, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("table %s (key %s): key column(s) %s are not in the replica identity, so deletes and key changes cannot be mirrored; set REPLICA IDENTITY FULL", table, tmpl, strings.Join(missing, ", "))
	}
	return nil
}

// newRelation builds the cache entry for a Relation message; info is the
// table's catalog entry (its primary key orders default keys and the
// newest row of singleton tables).
func newRelation(m *keymap.Mapper, msg *pglogrepl.RelationMessage, info tableInfo, enc *pgjson.Encoder) (*relation, error) {
	r := &relation{
		cols:      pgjson.ColumnsOf(msg),
		enc:       enc,
		id:        msg.RelationID,
		schema:    msg.Namespace,
		name:      msg.RelationName,
		qualified: msg.Namespace + "." + msg.RelationName,
		identity:  msg.ReplicaIdentity,
		pk:        info.pk,
	}
	var identCols []string
	for _, c := range msg.Columns {
		if c.Flags&1 != 0 {
			identCols = append(identCols, c.Name)
		}
	}
	if len(r.pk) == 0 && r.identity == 'd' {
		// The table is gone from the catalog (replaying old WAL): the
		// identity columns are the primary key.
		r.pk = identCols
	}
	tmpl, err := m.Table(r.schema, r.name, r.pk)
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", r.qualified, err)
	}
	r.tmpl = tmpl
	for _, c := range tmpl.Columns() {
		i := slices.IndexFunc(r.cols, func(col pgjson.Column) bool { return col.Name == c })
		if i < 0 {
			return nil, fmt.Errorf("table %s: key %s uses column %q, which the table does not have", r.qualified, tmpl, c)
		}
		r.keyCols = append(r.keyCols, i)
	}
	if err := checkIdentity(r.qualified, tmpl, r.identity, identCols); err != nil {
		return nil, err
	}
	if tmpl.Singleton() && len(r.pk) == 0 {
		return nil, fmt.Errorf("table %s (key %s): a single-key table needs a primary key to find its newest row", r.qualified, tmpl)
	}
	return r, nil
}

// values decodes a tuple into text values (nil = NULL). An unchanged TOAST
// value ('u') is taken from old, the old row that REPLICA IDENTITY FULL
// sends; without it the value is unknown and that is an error, never a
// placeholder.
func (r *relation) values(t, old *pglogrepl.TupleData) ([][]byte, error) {
	if t == nil {
		return nil, fmt.Errorf("table %s: change without row data", r.qualified)
	}
	if len(t.Columns) != len(r.cols) {
		return nil, fmt.Errorf("table %s: row has %d columns, relation has %d", r.qualified, len(t.Columns), len(r.cols))
	}
	vals := make([][]byte, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
		case pglogrepl.TupleDataTypeText:
			vals[i] = c.Data
		case pglogrepl.TupleDataTypeToast:
			if old == nil || len(old.Columns) != len(t.Columns) || old.Columns[i].DataType != pglogrepl.TupleDataTypeText {
				return nil, fmt.Errorf("table %s: column %q is an unchanged TOAST value and the old row does not carry it (set REPLICA IDENTITY FULL)", r.qualified, r.cols[i].Name)
			}
			vals[i] = old.Columns[i].Data
		default:
			return nil, fmt.Errorf("table %s: column %q has unexpected tuple data type %q", r.qualified, r.cols[i].Name, c.DataType)
		}
	}
	return vals, nil
}

// key builds the store key of a row from its text values: the key columns'
// JSON values (keyCols, in template order) go straight to the template.
func (r *relation) key(types *pgjson.TypeMap, vals [][]byte) (string, error) {
	keyVals := make([]json.RawMessage, len(r.keyCols))
	for j, i := range r.keyCols {
		if vals[i] == nil {
			continue // NULL: KeyValues refuses it
		}
		c := r.cols[i]
		v, err := types.AppendValue(nil, c.TypeOID, vals[i])
		if err != nil {
			return "", fmt.Errorf("table %s: key column %q: %w", r.qualified, c.Name, err)
		}
		keyVals[j] = v
	}
	k, err := r.tmpl.KeyValues(keyVals)
	if err != nil {
		return "", fmt.Errorf("table %s: %w", r.qualified, err)
	}
	return k, nil
}

// oldKey builds the key from an old row (replica identity or full row).
// Unchanged TOAST key columns are taken from the new row.
func (r *relation) oldKey(types *pgjson.TypeMap, old *pglogrepl.TupleData, newVals [][]byte) (string, error) {
	if len(old.Columns) != len(r.cols) {
		return "", fmt.Errorf("table %s: old row has %d columns, relation has %d", r.qualified, len(old.Columns), len(r.cols))
	}
	vals := make([][]byte, len(r.cols))
	for _, i := range r.keyCols {
		switch c := old.Columns[i]; c.DataType {
		case pglogrepl.TupleDataTypeText:
			vals[i] = c.Data
		case pglogrepl.TupleDataTypeToast:
			if newVals == nil {
				return "", fmt.Errorf("table %s: key column %q of the old row is an unchanged TOAST value", r.qualified, r.cols[i].Name)
			}
			vals[i] = newVals[i]
		}
	}
	return r.key(types, vals)
}

// selectSQL reads the table's published rows as to_jsonb text, each row
// followed by the to_jsonb text of its columns keyCols (the key template's):
// the copy builds the key from those few values instead of parsing the
// whole row. to_jsonb of a column gives the same JSON as that column's value
// inside to_jsonb of the row (the same conversion, the same jsonb output),
// and NULL for NULL. For a single-key table only the newest row (greatest
// primary key).
func selectSQL(t tableInfo, singleton bool, keyCols ...string) string {
	// ONLY: an inheritance child (storage.dimension under time_bound) is a
	// table of its own; a partition root reads its partitions.
	from := "ONLY " + sqlName(t.schema, t.name)
	if t.partitioned {
		from = sqlName(t.schema, t.name)
	}
	// t.*, not t: a column named t would win over the whole row. Columns
	// are qualified (t."c"): ORDER BY would take an unqualified name for
	// an output column (every output column is named to_jsonb).
	q := "SELECT to_jsonb(t.*)::text"
	for _, c := range keyCols {
		q += ", to_jsonb(t." + pgx.Identifier{c}.Sanitize() + ")::text"
	}
	q += " FROM " + from + " AS t"
	if t.rowFilter != nil {
		q += " WHERE " + *t.rowFilter
	}
	if singleton {
		order := make([]string, len(t.pk))
		for i, c := range t.pk {
			order[i] = "t." + pgx.Identifier{c}.Sanitize() + " DESC"
		}
		q += " ORDER BY " + strings.Join(order, ", ") + " LIMIT 1"
	}
	return q
}
