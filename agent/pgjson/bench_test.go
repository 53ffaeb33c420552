package pgjson_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/pgjson"
)

// benchRows are typical Lenkwerk rows in pgoutput text form.
var benchRows = []struct {
	name   string
	cols   []pgjson.Column
	values [][]byte
}{
	{
		name: "postgres_instance",
		cols: []pgjson.Column{{"id", 23}, {"host", 1043}, {"port", 23}, {"username", 1043}, {"status", 21}},
		values: [][]byte{[]byte("42"), []byte("pg-storage-017.bagger.internal"), []byte("5432"),
			[]byte("bagger"), []byte("3")},
	},
	{
		name: "dimension",
		cols: []pgjson.Column{{"valid_from", 1114}, {"valid_until", 1114}, {"id", 23}, {"ordinality", 23},
			{"default_val", 1043}, {"fieldname", 1043}},
		values: [][]byte{[]byte("2024-01-02 03:04:05.123456"), []byte("infinity"), []byte("7"), []byte("3"),
			[]byte("notexist"), []byte("customer_id")},
	},
	{
		name:   "config_4kB_json",
		cols:   []pgjson.Column{{"id", 23}, {"key", 25}, {"value", 114}},
		values: [][]byte{[]byte("9"), []byte("kvstore_config"), benchJSON()},
	},
}

// benchJSON is a 4 kB json document shaped like a servermap generation.
func benchJSON() []byte {
	var b strings.Builder
	b.WriteString(`{"generation": 12, "servers": [`)
	for i := 0; b.Len() < 4000; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`{"port": 5432, "host": "pg-storage-` + strconv.Itoa(i) + `.bagger.internal", "status": 3, "weight": 1.5, "tags": ["ssd", "eu-west"]}`)
	}
	b.WriteString(`], "created": "2024-01-02T03:04:05+00:00"}`)
	return []byte(b.String())
}

// BenchmarkAppendRow encodes typical rows into a reused buffer; x-raw is
// the time relative to appending the same values unencoded (the floor).
func BenchmarkAppendRow(b *testing.B) {
	types := pgjson.NewTypeMap()
	for _, r := range benchRows {
		enc, err := types.NewEncoder(r.cols)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(r.name, func(b *testing.B) {
			buf := make([]byte, 0, 8192)
			size := 0
			for _, v := range r.values {
				size += len(v)
			}
			start := time.Now()
			for i := 0; i < b.N; i++ {
				buf = buf[:0]
				for _, v := range r.values {
					buf = append(buf, v...)
				}
			}
			raw := time.Since(start)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if buf, err = enc.AppendRow(buf[:0], r.values); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed())/float64(max(raw, 1)), "x-raw")
		})
	}
}
