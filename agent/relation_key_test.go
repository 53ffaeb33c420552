package agent

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
)

// mapKey is how a row's key was built before KeyValues: the key columns'
// to_jsonb values in a map, read back by Template.Key.
func mapKey(r *relation, types *pgjson.TypeMap, vals [][]byte) (string, error) {
	row := make(map[string]json.RawMessage, len(r.keyCols))
	for _, i := range r.keyCols {
		c := r.cols[i]
		if vals[i] == nil {
			row[c.Name] = json.RawMessage("null")
			continue
		}
		v, err := types.AppendValue(nil, c.TypeOID, vals[i])
		if err != nil {
			return "", fmt.Errorf("table %s: key column %q: %w", r.qualified, c.Name, err)
		}
		row[c.Name] = v
	}
	k, err := r.tmpl.Key(row)
	if err != nil {
		return "", fmt.Errorf("table %s: %w", r.qualified, err)
	}
	return k, nil
}

// The decoder's keys, built from the key columns' values, are the keys the
// row map gave, for every type and value (strings unquoted and escaped,
// numbers, booleans, timestamps as to_jsonb writes them), and the errors
// are the same.
func TestRelationKeyEqualsMapKey(t *testing.T) {
	values := map[uint32][]string{
		16:   {"t", "f"},                                                             // bool
		20:   {"0", "-9223372036854775808", "9223372036854775807"},                   // int8
		21:   {"-32768", "7"},                                                        // int2
		23:   {"1", "-42"},                                                           // int4
		25:   {"a", "a/b%c", ".", "..", ".lenkwerk", "q\"u\\o", "ä 𝄞", "", "tab\tx"}, // text
		1043: {"varchar", "x y"},                                                     // varchar
		1042: {"pad  "},                                                              // bpchar
		700:  {"1.5", "NaN", "Infinity", "-0"},                                       // float4
		701:  {"3.141592653589793", "1e+300", "-Infinity"},                           // float8
		1700: {"1.50", "12345678901234567890.123", "NaN"},                            // numeric
		1082: {"2024-02-29", "infinity"},                                             // date
		1114: {"2024-02-29 12:34:56.789", "2024-02-29 12:34:56"},                     // timestamp
		1184: {"2024-02-29 12:34:56.789+00", "2024-02-29 12:34:56+05:30"},            // timestamptz
		1083: {"12:00:00"},                                                           // time
		1186: {"1 day 02:03:04"},                                                     // interval
		2950: {"550e8400-e29b-41d4-a716-446655440000"},                               // uuid
		17:   {"\\x00ff"},                                                            // bytea
		869:  {"192.168.0.1"},                                                        // inet
		3802: {`{"a": 1}`, `"s"`, `1`},                                               // jsonb
		1007: {"{1,2}", "{}"},                                                        // int4[]
	}
	m, err := keymap.New("/p", map[string]string{"public.k": "/K/{a}/x/{b}"})
	if err != nil {
		t.Fatal(err)
	}
	types := pgjson.NewTypeMap()
	n := 0
	for oid, vs := range values {
		msg := &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "k", ReplicaIdentity: 'f',
			Columns: []*pglogrepl.RelationMessageColumn{
				{Name: "v", DataType: oidText, TypeModifier: -1},
				{Flags: 1, Name: "b", DataType: oidInt4, TypeModifier: -1},
				{Flags: 1, Name: "a", DataType: oid, TypeModifier: -1},
			}}
		msg.ColumnNum = uint16(len(msg.Columns))
		r, err := newRelation(m, msg, tableInfo{schema: "public", name: "k", identity: 'f'}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range append(vs, "\x00nul", "not a value of the type", "") {
			for _, b := range [][]byte{[]byte("3"), nil, []byte("x")} {
				vals := [][]byte{[]byte("value"), b, []byte(v)}
				want, wantErr := mapKey(r, types, vals)
				got, gotErr := r.key(types, vals)
				if got != want || (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
					t.Errorf("type %d, a %q, b %q: key %q, %v; map path %q, %v", oid, v, b, got, gotErr, want, wantErr)
				}
				if wantErr == nil {
					n++
				}
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d keys built without an error: the comparison covers too little", n)
	}
}
