package pgjson_test

import (
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
)

func tupleOf(vals ...[]byte) *pglogrepl.TupleData {
	t := &pglogrepl.TupleData{ColumnNum: uint16(len(vals))}
	for _, v := range vals {
		c := &pglogrepl.TupleDataColumn{DataType: 't', Data: v, Length: uint32(len(v))}
		if v == nil {
			c.DataType = 'n'
		}
		t.Columns = append(t.Columns, c)
	}
	return t
}

// Examples checked against PostgreSQL 15's to_jsonb by TestToJSONBEquality;
// kept here so the rules are readable without a server.
func TestAppendRowExamples(t *testing.T) {
	cols := []pgjson.Column{
		{Name: "name", TypeOID: 25}, {Name: "id", TypeOID: 23}, {Name: "ok", TypeOID: 16},
		{Name: "f", TypeOID: 701}, {Name: "n", TypeOID: 1700}, {Name: "ts", TypeOID: 1184},
		{Name: "j", TypeOID: 114}, {Name: "a", TypeOID: 1007},
	}
	enc, err := pgjson.NewTypeMap().NewEncoder(cols)
	if err != nil {
		t.Fatal(err)
	}
	vals := [][]byte{[]byte("a\"\\\n\x01"), []byte("7"), []byte("t"), []byte("1e+20"), nil,
		[]byte("0044-03-15 12:00:00+00 BC"), []byte(`{"bb":1, "a": 1.5e1, "bb": 2}`), []byte("[0:1]={1,NULL}")}
	want := `{"a": [1, null], "f": 100000000000000000000, "j": {"a": 15, "bb": 2}, "n": null, "id": 7, "ok": true, "ts": "0044-03-15T12:00:00+00:00 BC", "name": "a\"\\\n\u0001"}`
	got, err := enc.AppendRow(nil, vals)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	got, err = enc.AppendTuple(nil, tupleOf(vals...))
	if err != nil || string(got) != want {
		t.Fatalf("AppendTuple: %s, %v", got, err)
	}
}
