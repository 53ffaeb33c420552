package pgjson

import "testing"

// FuzzTextParsers feeds arbitrary text to the array, composite, vector,
// timestamp and number parsers: PostgreSQL only sends well-formed output,
// but a malformed value must be an error, never a panic.
func FuzzTextParsers(f *testing.F) {
	pair := &typeInfo{oid: 1, name: "pair", kind: kindComposite, fields: []field{
		{name: "a", key: renderKey("a"), typ: builtinTypes[23]},
		{name: "b", key: renderKey("b"), typ: builtinTypes[1009]},
	}, order: []int{0, 1}}
	pairs := &typeInfo{oid: 2, name: "pair[]", kind: kindArray, delim: ',', elem: pair}
	types := []*typeInfo{pair, pairs, builtinTypes[1007], builtinTypes[1020], builtinTypes[22],
		builtinTypes[1184], builtinTypes[1114], builtinTypes[701], builtinTypes[114], builtinTypes[1009]}
	for _, s := range []string{`(1,"{a,""b""}")`, `(,)`, `(1`, `("`, `(\`, `{"(1,{})",NULL}`, `[2:3]={1,2}`,
		`{{1},{2}}`, `{`, `[1:`, `{"a\`, `((1,2),(3,4));((0,0),(1,1))`, `1 2`, `2024-01-02 03:04:05+05:30 BC`,
		`2024-01-02 03:04:05`, `1e+308`, `-0`, `{"a":[1e2]}`, `infinity`} {
		for k := range types {
			f.Add(k, s)
		}
	}
	f.Fuzz(func(t *testing.T, k int, s string) {
		if k < 0 || k >= len(types) {
			return
		}
		st := getState()
		defer putState(st)
		_, _ = st.appendValue(nil, types[k], []byte(s))
	})
}
