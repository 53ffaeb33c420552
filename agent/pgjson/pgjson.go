// Package pgjson encodes PostgreSQL text-format values (as pgoutput sends
// them with binary=false) into the JSON that to_jsonb would produce.
//
// This first version handles the scalar built-in types; arrays, composites,
// enums, domains and json normalization are not complete yet.
package pgjson

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Column describes one column of a relation, as a pgoutput Relation message gives it.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
}

// Querier is what Prepare needs to read the catalog (a *pgx.Conn, pgxpool.Pool or pgx.Tx).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

type kind uint8

const (
	kindString kind = iota
	kindBool
	kindNumber
	kindNumeric
	kindFloat
	kindJSONB
	kindJSON
)

var builtin = map[uint32]kind{
	16: kindBool, 20: kindNumber, 21: kindNumber, 23: kindNumber,
	1700: kindNumeric, 700: kindFloat, 701: kindFloat, 3802: kindJSONB, 114: kindJSON,
	25: kindString, 1043: kindString, 1042: kindString, 19: kindString, 2950: kindString,
	1082: kindString, 1114: kindString, 1184: kindString, 17: kindString,
}

// TypeMap knows how to encode each type OID; safe for concurrent use.
type TypeMap struct {
	mu    sync.RWMutex
	extra map[uint32]kind
}

// NewTypeMap returns a map that knows the built-in types.
func NewTypeMap() *TypeMap { return &TypeMap{extra: map[uint32]kind{}} }

// Prepare loads from pg_type every OID in oids that is not a known built-in.
// This first version maps enums to strings and domains to their base type.
func (m *TypeMap) Prepare(ctx context.Context, q Querier, oids []uint32) error {
	for _, oid := range oids {
		if _, ok := m.kindOf(oid); ok {
			continue
		}
		rows, err := q.Query(ctx, `SELECT typtype::text, typbasetype FROM pg_type WHERE oid = $1`, oid)
		if err != nil {
			return fmt.Errorf("pgjson: load type %d: %w", oid, err)
		}
		var typtype string
		var base uint32
		found := false
		for rows.Next() {
			if err := rows.Scan(&typtype, &base); err != nil {
				rows.Close()
				return fmt.Errorf("pgjson: scan type %d: %w", oid, err)
			}
			found = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("pgjson: load type %d: %w", oid, err)
		}
		if !found {
			return fmt.Errorf("pgjson: type %d not found", oid)
		}
		k := kindString
		if typtype == "d" {
			if bk, ok := m.kindOf(base); ok {
				k = bk
			}
		}
		m.mu.Lock()
		m.extra[oid] = k
		m.mu.Unlock()
	}
	return nil
}

func (m *TypeMap) kindOf(oid uint32) (kind, bool) {
	if k, ok := builtin[oid]; ok {
		return k, true
	}
	m.mu.RLock()
	k, ok := m.extra[oid]
	m.mu.RUnlock()
	return k, ok
}

// AppendValue appends the JSON to_jsonb would produce for one non-NULL value
// given in PostgreSQL text output format.
func (m *TypeMap) AppendValue(dst []byte, oid uint32, text []byte) ([]byte, error) {
	k, ok := m.kindOf(oid)
	if !ok {
		// Unknown types fall back to a string; Prepare should have been called.
		k = kindString
	}
	switch k {
	case kindBool:
		if len(text) == 1 && text[0] == 't' {
			return append(dst, "true"...), nil
		}
		return append(dst, "false"...), nil
	case kindNumber:
		return append(dst, text...), nil
	case kindNumeric, kindFloat:
		s := string(text)
		if s == "NaN" || s == "Infinity" || s == "-Infinity" {
			return appendString(dst, text), nil
		}
		return append(dst, text...), nil
	case kindJSONB, kindJSON:
		return append(dst, text...), nil
	}
	return appendString(dst, text), nil
}

// AppendRow appends a JSON object equal to to_jsonb(row): values[i] == nil
// means SQL NULL.
func (m *TypeMap) AppendRow(dst []byte, cols []Column, values [][]byte) ([]byte, error) {
	if len(cols) != len(values) {
		return dst, fmt.Errorf("pgjson: %d columns but %d values", len(cols), len(values))
	}
	idx := make([]int, len(cols))
	for i := range idx {
		idx[i] = i
	}
	// jsonb orders object keys by length, then bytes.
	sort.Slice(idx, func(a, b int) bool {
		x, y := cols[idx[a]].Name, cols[idx[b]].Name
		if len(x) != len(y) {
			return len(x) < len(y)
		}
		return x < y
	})
	dst = append(dst, '{')
	for n, i := range idx {
		if n > 0 {
			dst = append(dst, ", "...)
		}
		dst = appendString(dst, []byte(cols[i].Name))
		dst = append(dst, ": "...)
		if values[i] == nil {
			dst = append(dst, "null"...)
			continue
		}
		var err error
		dst, err = m.AppendValue(dst, cols[i].TypeOID, values[i])
		if err != nil {
			return dst, fmt.Errorf("pgjson: column %q: %w", cols[i].Name, err)
		}
	}
	return append(dst, '}'), nil
}

// appendString escapes like PostgreSQL's escape_json.
func appendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	for len(s) > 0 {
		c := s[0]
		switch c {
		case '"':
			dst = append(dst, `\"`...)
		case '\\':
			dst = append(dst, `\\`...)
		case '\b':
			dst = append(dst, `\b`...)
		case '\f':
			dst = append(dst, `\f`...)
		case '\n':
			dst = append(dst, `\n`...)
		case '\r':
			dst = append(dst, `\r`...)
		case '\t':
			dst = append(dst, `\t`...)
		default:
			if c < 0x20 {
				dst = append(dst, `\u00`...)
				dst = append(dst, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
			} else {
				dst = append(dst, c)
			}
		}
		s = s[1:]
	}
	return append(dst, '"')
}
