package pgjson_test

import (
	"context"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/integration/pgtest"
)

// TestRandomAgainstServer compares, for many random values, our encoding of
// the server's text output with the server's own to_jsonb: json documents
// (key order, duplicates, escapes, number spellings), float8 and float4
// bit patterns, and numerics.
func TestRandomAgainstServer(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, ctx, pgtest.NewDatabase(t), pgjson.SessionSettings())
	rng := rand.New(rand.NewPCG(1, 2))

	docs := make([]string, 400)
	for i := range docs {
		var b strings.Builder
		randomJSON(rng, &b, 0)
		docs[i] = b.String()
	}
	floats := make([]string, 400)
	for i := range floats {
		f := math.Float64frombits(rng.Uint64())
		if i%4 == 0 {
			f = rng.NormFloat64() * math.Pow(10, float64(rng.IntN(40)-20))
		}
		floats[i] = strconv.FormatFloat(f, 'g', -1, 64)
	}
	floats4 := make([]string, 200)
	for i := range floats4 {
		floats4[i] = strconv.FormatFloat(float64(math.Float32frombits(rng.Uint32())), 'g', -1, 32)
	}
	nums := make([]string, 200)
	for i := range nums {
		nums[i] = randomNumber(rng)
	}
	types := pgjson.NewTypeMap()
	for _, c := range []struct {
		typ  string
		oid  uint32
		vals []string
	}{{"json", 114, docs}, {"float8", 701, floats}, {"float4", 700, floats4}, {"numeric", 1700, nums}} {
		rows, err := conn.Query(ctx, "SELECT v::text, to_jsonb(v)::text FROM unnest($1::text[]) s, LATERAL (SELECT s::"+c.typ+" AS v) x", c.vals)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var text, want string
			if err := rows.Scan(&text, &want); err != nil {
				t.Fatal(err)
			}
			n++
			got, err := types.AppendValue(nil, c.oid, []byte(text))
			if err != nil {
				t.Errorf("%s %q: %v (to_jsonb: %s)", c.typ, text, err, want)
				continue
			}
			if string(got) != want {
				t.Errorf("%s %q:\ngot  %s\nwant %s", c.typ, text, got, want)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", c.typ, err)
		}
		if n != len(c.vals) {
			t.Fatalf("%s: %d rows for %d values", c.typ, n, len(c.vals))
		}
	}
}

var keyPool = []string{"a", "b", "A", "aa", "ab", "é", "e", "ée", "☃", "😀", "", " ", "a b", `q"`, `\`, "\t", "key", "Key", "ké", "kz"}

func randomJSON(rng *rand.Rand, b *strings.Builder, depth int) {
	ws := func() {
		for rng.IntN(4) == 0 {
			b.WriteByte(" \t\n\r"[rng.IntN(4)])
		}
	}
	// list writes n items, comma-separated, and the white space before
	// the closing bracket.
	list := func(n int, item func()) {
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			item()
		}
		ws()
	}
	ws()
	k := rng.IntN(10)
	if depth > 4 {
		k = 4 + rng.IntN(6)
	}
	switch k {
	case 0, 1:
		b.WriteByte('{')
		list(rng.IntN(6), func() {
			ws()
			randomString(rng, b, keyPool[rng.IntN(len(keyPool))])
			ws()
			b.WriteByte(':')
			randomJSON(rng, b, depth+1)
		})
		b.WriteByte('}')
	case 2, 3:
		b.WriteByte('[')
		list(rng.IntN(5), func() { randomJSON(rng, b, depth+1) })
		b.WriteByte(']')
	case 4, 5:
		b.WriteString(randomNumber(rng))
	case 6:
		b.WriteString([]string{"true", "false", "null"}[rng.IntN(3)])
	default:
		var s strings.Builder
		for i := rng.IntN(8); i > 0; i-- {
			s.WriteString([]string{"x", "é", "😀", "\x01", "\x1f", "\x7f", `"`, `\`, "/", "\n", "\u2028", " "}[rng.IntN(12)])
		}
		randomString(rng, b, s.String())
	}
	ws()
}

// randomString writes s as a JSON string, escaping characters in one of the
// ways JSON allows, chosen at random.
func randomString(rng *rand.Rand, b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\' || r < 0x20 || rng.IntN(5) == 0:
			if r >= 0x10000 {
				r -= 0x10000
				hi, lo := 0xD800+(r>>10), 0xDC00+(r&0x3FF)
				b.WriteString(`\u` + hex4(hi, rng) + `\u` + hex4(lo, rng))
				continue
			}
			if named, ok := map[rune]string{'"': `\"`, '\\': `\\`, '\n': `\n`, '\t': `\t`, '/': `\/`}[r]; ok && rng.IntN(2) == 0 {
				b.WriteString(named)
				continue
			}
			b.WriteString(`\u` + hex4(r, rng))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

func hex4(r rune, rng *rand.Rand) string {
	h := strconv.FormatInt(int64(r)|0x10000, 16)[1:]
	if rng.IntN(2) == 0 {
		h = strings.ToUpper(h)
	}
	return h
}

func randomNumber(rng *rand.Rand) string {
	var b strings.Builder
	if rng.IntN(3) == 0 {
		b.WriteByte('-')
	}
	if rng.IntN(4) == 0 {
		b.WriteByte('0')
	} else {
		b.WriteString(strconv.FormatUint(rng.Uint64()>>rng.IntN(64), 10))
	}
	if rng.IntN(2) == 0 {
		b.WriteByte('.')
		for i := 1 + rng.IntN(12); i > 0; i-- {
			b.WriteByte(byte('0' + rng.IntN(10)))
		}
	}
	if rng.IntN(3) == 0 {
		b.WriteString([]string{"e", "E", "e+", "e-", "E-"}[rng.IntN(5)])
		b.WriteString(strconv.Itoa(rng.IntN(40)))
	}
	return b.String()
}
