package pgjson

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Querier reads the catalog; *pgx.Conn, *pgxpool.Pool and pgx.Tx satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ErrUnsupportedType is returned (wrapped, naming the type) for a type whose
// to_jsonb form this package cannot reproduce: pseudo-types and user types
// with a function cast to json (to_jsonb calls that cast).
var ErrUnsupportedType = errors.New("unsupported type")

// ErrUnknownType is returned (wrapped, naming the OID) when a type has not
// been loaded into the TypeMap; call Load or Encoder with a Querier first.
var ErrUnknownType = errors.New("unknown type")

// TypeMap knows how to encode each type OID: the built-in types from the
// start, and enums, domains, composites, ranges, arrays of those and
// extension types once Load read them from pg_type and pg_attribute. It is
// safe for concurrent use.
//
// Loaded types are cached until Invalidate. Encoders already built keep the
// definitions they were built with, so after a schema change (a pgoutput
// Relation message, ALTER TYPE) call Invalidate and build new Encoders.
type TypeMap struct {
	mu     sync.RWMutex
	loaded map[uint32]*typeInfo
}

// NewTypeMap returns a TypeMap that knows the built-in types.
func NewTypeMap() *TypeMap { return &TypeMap{loaded: map[uint32]*typeInfo{}} }

// Invalidate forgets every type read from the catalog, so that the next Load
// or Encoder reads it again. Built-in types are never forgotten.
func (m *TypeMap) Invalidate() {
	m.mu.Lock()
	m.loaded = map[uint32]*typeInfo{}
	m.mu.Unlock()
}

func (m *TypeMap) lookup(oid uint32) *typeInfo {
	if t := builtinTypes[oid]; t != nil {
		return t
	}
	m.mu.RLock()
	t := m.loaded[oid]
	m.mu.RUnlock()
	return t
}

// catalogType is one pg_type row as Load reads it.
type catalogType struct {
	oid, elem, base, relid uint32
	name                   string
	typtype                string
	delim                  string
	isArray, jsonCast      bool
	attrs                  []catalogAttr
}

type catalogAttr struct {
	name string
	typ  uint32
}

const typeQuery = `SELECT t.oid, CASE WHEN n.nspname = 'pg_catalog' THEN '' ELSE n.nspname || '.' END || t.typname,
	t.typtype::text, t.typelem, t.typbasetype, t.typrelid, t.typdelim::text,
	t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc,
	t.oid >= 16384 AND EXISTS (SELECT FROM pg_catalog.pg_cast c
		WHERE c.castsource = t.oid AND c.casttarget = 'pg_catalog.json'::pg_catalog.regtype AND c.castmethod = 'f')
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = ANY($1::pg_catalog.oid[])`

const attrQuery = `SELECT a.attrelid, a.attname, a.atttypid FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY($1::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum`

// Load reads from the catalog every type in oids that the map does not know
// yet, with everything those types refer to (element, base and attribute
// types). It fails, naming the type, for a type that does not exist or that
// is unsupported (see ErrUnsupportedType).
func (m *TypeMap) Load(ctx context.Context, q Querier, oids ...uint32) error {
	_, err := m.load(ctx, q, oids)
	return err
}

// load is Load returning the types of oids, which stay valid whatever
// Invalidate does meanwhile.
func (m *TypeMap) load(ctx context.Context, q Querier, oids []uint32) (map[uint32]*typeInfo, error) {
	got := make(map[uint32]*typeInfo, len(oids))
	all := true
	for _, oid := range oids {
		if t := m.lookup(oid); t != nil {
			got[oid] = t
		} else {
			all = false
		}
	}
	if all {
		return got, nil
	}
	rows := map[uint32]*catalogType{}
	var todo []uint32
	known := got // types resolved before the catalog is read
	lookup := func(oid uint32) *typeInfo {
		if t := known[oid]; t != nil {
			return t
		}
		if t := m.lookup(oid); t != nil {
			known[oid] = t
			return t
		}
		return nil
	}
	need := func(oid uint32) {
		if oid == 0 || lookup(oid) != nil {
			return
		}
		if _, ok := rows[oid]; ok {
			return
		}
		rows[oid] = nil
		todo = append(todo, oid)
	}
	for _, oid := range oids {
		need(oid)
	}
	for len(todo) > 0 {
		batch := todo
		todo = nil
		cat, err := queryTypes(ctx, q, batch)
		if err != nil {
			return nil, err
		}
		for _, oid := range batch {
			ct := cat[oid]
			if ct == nil {
				return nil, fmt.Errorf("pgjson: type oid %d: %w: not in pg_type", oid, ErrUnknownType)
			}
			rows[oid] = ct
			switch {
			case ct.typtype == "d":
				need(ct.base)
			case ct.isArray:
				need(ct.elem)
			case ct.typtype == "c":
				for _, a := range ct.attrs {
					need(a.typ)
				}
			}
		}
	}
	built := map[uint32]*typeInfo{}
	var build func(oid uint32, depth int) (*typeInfo, error)
	build = func(oid uint32, depth int) (*typeInfo, error) {
		if t := lookup(oid); t != nil {
			return t, nil
		}
		if t := built[oid]; t != nil {
			return t, nil
		}
		if depth > 100 {
			return nil, fmt.Errorf("pgjson: type oid %d: %w: definition nests too deep", oid, ErrUnsupportedType)
		}
		ct := rows[oid]
		if ct == nil {
			return nil, fmt.Errorf("pgjson: type oid %d: %w", oid, ErrUnknownType)
		}
		t := &typeInfo{oid: oid, name: ct.name, kind: kindText, delim: ','}
		if len(ct.delim) == 1 {
			t.delim = ct.delim[0]
		}
		// The order of json_categorize_type: domains are looked through,
		// then arrays, composites, and casts to json of non-built-in types.
		switch {
		case ct.typtype == "d":
			base, err := build(ct.base, depth+1)
			if err != nil {
				return nil, err
			}
			// The domain encodes exactly like its base type.
			t = base
		case ct.isArray:
			elem, err := build(ct.elem, depth+1)
			if err != nil {
				return nil, err
			}
			t.kind, t.elem = kindArray, elem
		case ct.typtype == "c":
			t.kind = kindComposite
			names := make([]string, len(ct.attrs))
			for i, a := range ct.attrs {
				ft, err := build(a.typ, depth+1)
				if err != nil {
					return nil, fmt.Errorf("pgjson: type %s attribute %q: %w", t, a.name, err)
				}
				t.fields = append(t.fields, field{name: a.name, key: renderKey(a.name), typ: ft})
				names[i] = a.name
			}
			t.order = keyOrder(names)
		case ct.typtype == "p":
			return nil, fmt.Errorf("pgjson: type %s: %w: pseudo-type", t, ErrUnsupportedType)
		case ct.jsonCast:
			return nil, fmt.Errorf("pgjson: type %s: %w: it has a cast to json, which to_jsonb would call", t, ErrUnsupportedType)
		}
		built[oid] = t
		return t, nil
	}
	for oid := range rows {
		if _, err := build(oid, 0); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	for oid, t := range built {
		m.loaded[oid] = t
	}
	m.mu.Unlock()
	for _, oid := range oids {
		if got[oid] == nil {
			got[oid] = built[oid]
		}
	}
	return got, nil
}

func queryTypes(ctx context.Context, q Querier, oids []uint32) (map[uint32]*catalogType, error) {
	rows, err := q.Query(ctx, typeQuery, oids)
	if err != nil {
		return nil, fmt.Errorf("pgjson: read pg_type: %w", err)
	}
	got := map[uint32]*catalogType{}
	var relids []uint32
	byRel := map[uint32]*catalogType{}
	for rows.Next() {
		ct := &catalogType{}
		if err := rows.Scan(&ct.oid, &ct.name, &ct.typtype, &ct.elem, &ct.base, &ct.relid, &ct.delim, &ct.isArray, &ct.jsonCast); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgjson: read pg_type: %w", err)
		}
		got[ct.oid] = ct
		if ct.typtype == "c" {
			relids = append(relids, ct.relid)
			byRel[ct.relid] = ct
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgjson: read pg_type: %w", err)
	}
	if len(relids) == 0 {
		return got, nil
	}
	rows, err = q.Query(ctx, attrQuery, relids)
	if err != nil {
		return nil, fmt.Errorf("pgjson: read pg_attribute: %w", err)
	}
	for rows.Next() {
		var relid uint32
		var a catalogAttr
		if err := rows.Scan(&relid, &a.name, &a.typ); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgjson: read pg_attribute: %w", err)
		}
		if ct := byRel[relid]; ct != nil {
			ct.attrs = append(ct.attrs, a)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgjson: read pg_attribute: %w", err)
	}
	return got, nil
}
