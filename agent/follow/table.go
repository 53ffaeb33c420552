package follow

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/jackc/pgx/v5"
)

// table is a template's local table as the catalog describes it, with the
// statements that write it. Every identifier in the statements comes from
// the catalog and is quoted.
type table struct {
	name    string // the template's "schema.table"
	tmpl    *keymap.Template
	keyCols []string // the template's columns, in key order
	cols    map[string]bool
	oid     uint32
	// rank orders tables by foreign keys: a table's rank is above that of
	// every table it references.
	rank int

	upsertSQL, deleteSQL, clearSQL, insertSQL, selectSQL string
}

// refusedSchemas are never written, whatever the templates say: the
// system's and the follower's own.
var refusedSchemas = []string{"pg_catalog", "information_schema", "pg_toast", "lenkwerk"}

// resolveTable finds the template's table in the local database: its name
// is checked with to_regclass (quoted as pgx.Identifier), never spliced
// into SQL, and the statements use the names the catalog returns.
func resolveTable(ctx context.Context, conn *pgx.Conn, tmpl *keymap.Template) (*table, error) {
	schema, name, ok := strings.Cut(tmpl.Table(), ".")
	if !ok || schema == "" || name == "" {
		return nil, fmt.Errorf("template %s: table name is not schema.table", tmpl.Table())
	}
	var (
		oid            uint32
		nsp, rel, kind string
		exists         bool
		quoted         = pgx.Identifier{schema, name}.Sanitize()
	)
	err := conn.QueryRow(ctx, `SELECT c.oid IS NOT NULL, coalesce(c.oid, 0), coalesce(n.nspname, ''), coalesce(c.relname, ''), coalesce(c.relkind::text, '')
		FROM (SELECT to_regclass($1) AS r) x
		LEFT JOIN pg_catalog.pg_class c ON c.oid = x.r
		LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`, quoted).Scan(&exists, &oid, &nsp, &rel, &kind)
	if err != nil {
		return nil, fmt.Errorf("template %s: look up table %s: %w", tmpl.Table(), quoted, err)
	}
	switch {
	case !exists:
		return nil, fmt.Errorf("template %s: table %s does not exist in the local copy", tmpl.Table(), quoted)
	case slices.Contains(refusedSchemas, nsp) || strings.HasPrefix(nsp, "pg_"):
		return nil, fmt.Errorf("template %s: table %s is in schema %s, which lenkwerk follow never writes", tmpl.Table(), quoted, nsp)
	case kind != "r" && kind != "p":
		return nil, fmt.Errorf("template %s: %s is not a table (relkind %s)", tmpl.Table(), quoted, kind)
	}
	// jsonNull: a json or jsonb column (or a domain over one) that is NOT
	// NULL, where a JSON null can only be the value itself (see buildSQL).
	rows, err := conn.Query(ctx, `SELECT a.attname::text,
			coalesce(nullif(ty.typbasetype, 0), a.atttypid) IN ('json'::regtype, 'jsonb'::regtype) AND (a.attnotnull OR ty.typnotnull)
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("template %s: read columns of %s: %w", tmpl.Table(), quoted, err)
	}
	type column struct {
		name     string
		jsonNull bool
	}
	catalog, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		err := r.Scan(&c.name, &c.jsonNull)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("template %s: read columns of %s: %w", tmpl.Table(), quoted, err)
	}
	t := &table{name: tmpl.Table(), tmpl: tmpl, oid: oid, cols: map[string]bool{}}
	cols := make([]string, len(catalog))
	var jsonNull []string
	for i, c := range catalog {
		cols[i] = c.name
		t.cols[c.name] = true
		if c.jsonNull {
			jsonNull = append(jsonNull, c.name)
		}
	}
	for _, c := range tmpl.Columns() {
		if !slices.Contains(cols, c) {
			return nil, fmt.Errorf("template %s (%s): table %s has no column %q", tmpl.Table(), tmpl, quoted, c)
		}
		t.keyCols = append(t.keyCols, c)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("template %s: table %s has no columns", tmpl.Table(), quoted)
	}
	t.buildSQL(pgx.Identifier{nsp, rel}.Sanitize(), cols, jsonNull, tmpl.Singleton())
	return t, nil
}

// quoteAll quotes column names, optionally qualified by alias.
func quoteAll(alias string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pgx.Identifier{c}.Sanitize()
		if alias != "" {
			q[i] = alias + "." + q[i]
		}
	}
	return strings.Join(q, ", ")
}

// quoteLiteral quotes s as an escape string constant, whatever
// standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(s) + "'"
}

// buildSQL prepares the statements; rel is the quoted, qualified name.
// Values come in as $1, a JSON document read by json_populate_record.
// json_populate_record turns a JSON null into SQL NULL, also for a json
// column: in the jsonNull columns (NOT NULL json or jsonb), where the
// source can only have held the JSON null, the field is taken as it is.
// Elsewhere SQL NULL stays (to_jsonb writes both as null).
func (t *table) buildSQL(rel string, cols, jsonNull []string, singleton bool) {
	all := quoteAll("", cols)
	fields := make([]string, len(cols))
	for i, c := range cols {
		q := pgx.Identifier{c}.Sanitize()
		fields[i] = "r." + q
		if slices.Contains(jsonNull, c) {
			fields[i] = "coalesce(r." + q + ", $1::json -> " + quoteLiteral(c) + ") AS " + q
		}
	}
	newRow := "SELECT " + strings.Join(fields, ", ") + " FROM json_populate_record(NULL::" + rel + ", $1::json) AS r"
	t.insertSQL = "INSERT INTO " + rel + " (" + all + ") " + newRow
	t.clearSQL = "DELETE FROM ONLY " + rel
	// t.*, not t: a column named t would win over the row.
	t.selectSQL = "SELECT to_jsonb(t.*)::text FROM ONLY " + rel + " AS t"
	if singleton {
		return
	}
	keys := quoteAll("", t.keyCols)
	// One statement: UPDATE the row with the key's values, else INSERT.
	// The SET list and the key use the catalog's names, quoted.
	t.upsertSQL = "WITH new AS (" + newRow + "), upd AS (UPDATE ONLY " + rel + " AS t SET (" + all + ") = (SELECT " + all + " FROM new)" +
		" WHERE (" + quoteAll("t", t.keyCols) + ") = (SELECT " + keys + " FROM new) RETURNING 1)" +
		" INSERT INTO " + rel + " (" + all + ") SELECT " + all + " FROM new WHERE NOT EXISTS (SELECT FROM upd)"
	t.deleteSQL = "DELETE FROM ONLY " + rel + " AS t WHERE (" + quoteAll("t", t.keyCols) + ") = (SELECT " + keys + " FROM json_populate_record(NULL::" + rel + ", $1::json))"
}

// rankTables orders the tables by the foreign keys among them (parents
// first); a cycle leaves its tables at the rank reached after n rounds.
func rankTables(ctx context.Context, conn *pgx.Conn, tables []*table) error {
	oids := make([]uint32, len(tables))
	byOID := map[uint32]*table{}
	for i, t := range tables {
		oids[i] = t.oid
		byOID[t.oid] = t
	}
	rows, err := conn.Query(ctx, `SELECT conrelid::oid::int8, confrelid::oid::int8 FROM pg_catalog.pg_constraint
		WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[]) AND conrelid <> confrelid`, oids)
	if err != nil {
		return fmt.Errorf("read foreign keys: %w", err)
	}
	type edge struct{ child, parent uint32 }
	edges, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (edge, error) {
		var c, p int64
		err := r.Scan(&c, &p)
		return edge{uint32(c), uint32(p)}, err
	})
	if err != nil {
		return fmt.Errorf("read foreign keys: %w", err)
	}
	for range tables {
		for _, e := range edges {
			if c, p := byOID[e.child], byOID[e.parent]; c.rank <= p.rank {
				c.rank = p.rank + 1
			}
		}
	}
	return nil
}
