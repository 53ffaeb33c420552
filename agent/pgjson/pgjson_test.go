package pgjson

import "testing"

func TestAppendRowOrderAndEscapes(t *testing.T) {
	m := NewTypeMap()
	cols := []Column{{Name: "name", TypeOID: 25}, {Name: "id", TypeOID: 23}, {Name: "ok", TypeOID: 16}, {Name: "f", TypeOID: 701}, {Name: "n", TypeOID: 1700}}
	vals := [][]byte{[]byte("a\"\\\n\x01"), []byte("7"), []byte("t"), []byte("NaN"), nil}
	got, err := m.AppendRow(nil, cols, vals)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"f": "NaN", "n": null, "id": 7, "ok": true, "name": "a\"\\\n\u0001"}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
