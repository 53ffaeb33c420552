package pgjson

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// ErrUnchangedToast is returned (wrapped, naming the column) by
// AppendTuple for a column pgoutput sent as 'u': an unchanged TOASTed value
// whose data is not in the message. The caller must supply the value (from
// the old tuple with REPLICA IDENTITY FULL, or from its own copy).
var ErrUnchangedToast = errors.New("unchanged TOAST value not sent")

// Column is one column of a relation, as a pgoutput Relation message
// describes it.
type Column struct {
	Name    string
	TypeOID uint32
}

// ColumnsOf returns the columns of a pgoutput Relation message.
func ColumnsOf(rel *pglogrepl.RelationMessage) []Column {
	cols := make([]Column, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = Column{Name: c.Name, TypeOID: c.DataType}
	}
	return cols
}

// Encoder encodes rows of one relation (a fixed list of columns) as
// to_jsonb(row) would. It is immutable and safe for concurrent use; build a
// new one when the relation or one of its types changes.
type Encoder struct {
	cols  []encCol
	order []int // column indexes in jsonb key order
}

type encCol struct {
	name string
	key  []byte // `"name": `
	typ  *typeInfo
}

// Encoder loads (through q) the types of cols that m does not know yet and
// returns an Encoder for rows with these columns.
func (m *TypeMap) Encoder(ctx context.Context, q Querier, cols []Column) (*Encoder, error) {
	oids := make([]uint32, len(cols))
	for i, c := range cols {
		oids[i] = c.TypeOID
	}
	types, err := m.load(ctx, q, oids)
	if err != nil {
		return nil, err
	}
	return newEncoder(cols, func(oid uint32) *typeInfo { return types[oid] })
}

// NewEncoder returns an Encoder for rows with columns cols, whose types m
// must already know (built-in or loaded); otherwise the error wraps
// ErrUnknownType and names the column.
func (m *TypeMap) NewEncoder(cols []Column) (*Encoder, error) {
	return newEncoder(cols, m.lookup)
}

func newEncoder(cols []Column, lookup func(uint32) *typeInfo) (*Encoder, error) {
	e := &Encoder{cols: make([]encCol, len(cols))}
	names := make([]string, len(cols))
	for i, c := range cols {
		t := lookup(c.TypeOID)
		if t == nil {
			return nil, fmt.Errorf("pgjson: column %q: type oid %d: %w", c.Name, c.TypeOID, ErrUnknownType)
		}
		e.cols[i] = encCol{name: c.Name, key: renderKey(c.Name), typ: t}
		names[i] = c.Name
	}
	e.order = keyOrder(names)
	return e, nil
}

// AppendRow appends to dst the JSON object to_jsonb(row)::text gives for
// the row whose values, in column order, are values: each the column's
// PostgreSQL text output (as pgoutput sends it with binary off), nil for
// NULL. The replication connection must use SessionSettings. On error dst
// is returned unchanged.
func (e *Encoder) AppendRow(dst []byte, values [][]byte) ([]byte, error) {
	if len(values) != len(e.cols) {
		return dst, fmt.Errorf("pgjson: %d columns but %d values", len(e.cols), len(values))
	}
	return e.appendObject(dst, func(_ *encCol, i int) ([]byte, bool, error) {
		return values[i], values[i] == nil, nil
	})
}

// AppendTuple is AppendRow for a pgoutput tuple. Binary values and
// unchanged TOAST values ('u', see ErrUnchangedToast) are errors naming
// the column.
func (e *Encoder) AppendTuple(dst []byte, tuple *pglogrepl.TupleData) ([]byte, error) {
	if tuple == nil || len(tuple.Columns) != len(e.cols) {
		n := 0
		if tuple != nil {
			n = len(tuple.Columns)
		}
		return dst, fmt.Errorf("pgjson: %d columns but %d values", len(e.cols), n)
	}
	return e.appendObject(dst, func(c *encCol, i int) ([]byte, bool, error) {
		switch tc := tuple.Columns[i]; tc.DataType {
		case pglogrepl.TupleDataTypeNull:
			return nil, true, nil
		case pglogrepl.TupleDataTypeText:
			return tc.Data, false, nil
		case pglogrepl.TupleDataTypeToast:
			return nil, false, fmt.Errorf("pgjson: column %q: %w", c.name, ErrUnchangedToast)
		default:
			return nil, false, fmt.Errorf("pgjson: column %q: value in format %q: only text format is supported", c.name, tc.DataType)
		}
	})
}

// appendObject appends the row as a JSON object, its keys in jsonb order;
// value gives column i's text, or null, or an error that ends the row. On
// error dst is returned unchanged.
func (e *Encoder) appendObject(dst []byte, value func(c *encCol, i int) (text []byte, null bool, err error)) ([]byte, error) {
	n0 := len(dst)
	st := getState()
	defer putState(st)
	dst = append(dst, '{')
	for n, i := range e.order {
		if n > 0 {
			dst = append(dst, ',', ' ')
		}
		c := &e.cols[i]
		dst = append(dst, c.key...)
		text, null, err := value(c, i)
		if err != nil {
			return dst[:n0], err
		}
		if null {
			dst = append(dst, "null"...)
			continue
		}
		if dst, err = st.appendValue(dst, c.typ, text); err != nil {
			return dst[:n0], fmt.Errorf("pgjson: column %q (%s): %w", c.name, c.typ.name, err)
		}
	}
	return append(dst, '}'), nil
}

// AppendValue appends the to_jsonb form of one non-NULL value of type oid
// given as its text output. The type must be known (see Load).
func (m *TypeMap) AppendValue(dst []byte, oid uint32, text []byte) ([]byte, error) {
	t := m.lookup(oid)
	if t == nil {
		return dst, fmt.Errorf("pgjson: type oid %d: %w", oid, ErrUnknownType)
	}
	st := getState()
	defer putState(st)
	dst, err := st.appendValue(dst, t, text)
	if err != nil {
		return dst, fmt.Errorf("pgjson: %s: %w", t.name, err)
	}
	return dst, nil
}
