package pgjson

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

// The built-in table must say what the catalog says: arrays are arrays of
// the right element, element delimiters are typdelim, and the types given
// a special kind are the ones json_categorize_type singles out.
func TestBuiltinTypesMatchCatalog(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	oids := make([]uint32, 0, len(builtinTypes))
	for oid := range builtinTypes {
		oids = append(oids, oid)
	}
	cat, err := queryTypes(ctx, conn, oids)
	if err != nil {
		t.Fatal(err)
	}
	special := map[string]kind{"bool": kindBool, "int2": kindInt, "int4": kindInt, "int8": kindInt,
		"numeric": kindNumeric, "float4": kindFloat, "float8": kindFloat, "json": kindJSON, "jsonb": kindJSONB,
		"timestamp": kindTimestamp, "timestamptz": kindTimestampTZ, "int2vector": kindVector, "oidvector": kindVector}
	for oid, bt := range builtinTypes {
		ct := cat[oid]
		if ct == nil {
			t.Errorf("%s: oid %d not in pg_type", bt.name, oid)
			continue
		}
		if string(bt.delim) != ct.delim {
			t.Errorf("%s: delim %q, typdelim %q", bt.name, bt.delim, ct.delim)
		}
		switch {
		case bt.kind == kindVector:
			if special[ct.name] != kindVector || ct.elem != bt.elem.oid {
				t.Errorf("%s: vector of %d, catalog %s of %d", bt.name, bt.elem.oid, ct.name, ct.elem)
			}
		case bt.kind == kindArray:
			if !ct.isArray || ct.elem != bt.elem.oid {
				t.Errorf("%s: array of %d, catalog %s (array %v) of %d", bt.name, bt.elem.oid, ct.name, ct.isArray, ct.elem)
			}
		default:
			if ct.isArray || ct.typtype == "c" || ct.typtype == "d" || ct.typtype == "p" {
				t.Errorf("%s: scalar, catalog %s typtype %s array %v", bt.name, ct.name, ct.typtype, ct.isArray)
			}
			if k, ok := special[ct.name]; ok != (bt.kind != kindText) || k != bt.kind {
				t.Errorf("%s: kind %d, catalog %s wants %d", bt.name, bt.kind, ct.name, k)
			}
		}
	}
}
