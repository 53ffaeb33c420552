package pgjson_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// schemaSQL creates the user types the cases use.
const schemaSQL = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'a "quoted", label', 'with space', 'NULL', 'é');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN dom_dom AS posint;
CREATE DOMAIN short_text AS varchar(20);
CREATE DOMAIN js AS json;
CREATE DOMAIN utc_ts AS timestamptz;
CREATE DOMAIN int_list AS int[];
CREATE DOMAIN boxdom AS box;
CREATE DOMAIN float_dom AS float8;
CREATE TYPE inner_t AS (a int, b text);
CREATE TYPE outer_t AS ("x y" inner_t, z timestamptz, arr int[], j json, m mood, "é" numeric, n inner_t[], f float4, bx box);
CREATE TYPE dropped_t AS (a int, b text, c float8);
ALTER TYPE dropped_t DROP ATTRIBUTE b;
CREATE TYPE empty_t AS ();
CREATE DOMAIN inner_dom AS inner_t;
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TABLE weird_cols (a int, "B" text, "é" bool, ab json, "Zz" date, "a b" numeric, """q""" text, "aa" text);
`

// liveCase is one column type and the SQL literals to insert into it (a
// NULL row is added to every case).
type liveCase struct {
	name   string
	typ    string   // column type; empty when table names a prepared table
	table  string   // a table from schemaSQL, values are whole VALUES tuples
	values []string // SQL expressions
	// lossy says why json_populate_record may not give some of these rows
	// back exactly; to_jsonb itself loses the difference (our output is
	// byte-equal to to_jsonb's all the same).
	lossy string
}

func lit(vals ...string) []string {
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
	}
	return out
}

var jsonLiterals = lit(
	`{"b":1,"a":2}`,
	`{"aa":1,"b":2,"aa":3}`,
	` { "k" : [ 1 , 2.50 , -0 , 1e2 , 1E-2, 0.1e1, -0.0e3, 1.50e1, 0.000e5 ] , "":null } `,
	`"str"`,
	`"\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\\u001f\u007f\u0041\u0022\u005c\u000b"`,
	`123`, `-0.0`, `1e400`, `1e-400`, `12345678901234567890123456789`, `-1.000e+3`, `1.0E-5`,
	`true`, `false`, `null`, `{}`, `[]`, `[{}, [], [[]]]`,
	`{"a":{"b":{"c":{"b":1,"a":2}}},"a ":0, "A": [ {"y":1, "x": 2} ]}`,
	`{"é":1,"e":2,"ee":3,"z":4,"Z":5}`,
	`{"dup":{"x":1},"dup":{"y":2},"dup":3}`,
	`{"B":1,"a":2,"A":3,"\u0041":4}`,
	"\t\r\n [1,\n2]\n",
	`"raw é ☃ 😀 and \u2028"`,
	`{"long":"`+strings.Repeat("x", 3000)+`","n":[`+strings.Repeat("1.5e3,", 200)+`0]}`,
)

var cases = []liveCase{
	{name: "int2", typ: "int2", values: []string{"0", "-32768", "32767"}},
	{name: "int4", typ: "int4", values: []string{"0", "-2147483648", "2147483647"}},
	{name: "int8", typ: "int8", values: []string{"0", "-9223372036854775808", "9223372036854775807"}},
	{name: "oid", typ: "oid", values: []string{"0", "4294967295", "1259"}},
	{name: "numeric", typ: "numeric", values: append(lit("0", "-0.0", "1.50", "-123456789012345678901234567890.123456789",
		"NaN", "Infinity", "-Infinity", "1e-20", "0.0000", "1e300", "-0.000001"), "repeat('9', 1000)::numeric", "('0.' || repeat('0', 16382) || '1')::numeric")},
	{name: "numeric(5,2)", typ: "numeric(5,2)", values: lit("3.1", "-999.99", "0")},
	{name: "float8", typ: "float8", values: lit("0", "-0", "0.1", "1e308", "5e-324", "1.7976931348623157e308", "2.2250738585072014e-308",
		"-1.5e-7", "123456789012345680000", "1e15", "1e16", "3.141592653589793", "NaN", "Infinity", "-Infinity", "100", "-2.5", "0.30000000000000004"), lossy: "to_jsonb writes -0 as 0"},
	{name: "float4", typ: "float4", values: lit("0", "-0", "1.1", "3.4028235e38", "1e-45", "1.17549435e-38", "16777216", "0.1", "NaN", "Infinity", "-Infinity", "1e10"), lossy: "to_jsonb writes -0 as 0"},
	{name: "bool", typ: "bool", values: []string{"true", "false"}},
	{name: "text", typ: "text", values: append(lit("", "plain", `"`, `\`, `a\b`, "\x01\x02\x1f", "\x7f", "\n\r\t\b\f\v",
		"héllo ☃ 😀", "NULL", "null", "{1,2}", "(a,b)", " lead and trail ", "</script>", "\u2028\u2029", `\u0041`), "repeat('x', 5000)")},
	{name: "varchar", typ: "varchar(10)", values: lit("abc", "", "ünïcödé")},
	{name: "bpchar", typ: "char(5)", values: lit("ab", "", "abcde")},
	{name: "name", typ: "name", values: lit("some_name", "Mixed Case", `q"uote`)},
	{name: "char", typ: `"char"`, values: []string{`'a'::"char"`, `''::"char"`, `'\201'::"char"`, `'"'::"char"`, `'\'::"char"`}},
	{name: "json", typ: "json", values: jsonLiterals, lossy: "json becomes jsonb: spacing, key order, duplicate keys and number spelling go; JSON null reads back as SQL NULL"},
	{name: "json errors", typ: "json", values: lit(`"\u0000"`, `{"a":"x\u0000"}`, `[1e200000]`, "1"+strings.Repeat("0", 131072))},
	{name: "jsonb", typ: "jsonb", values: jsonLiterals, lossy: "JSON null reads back as SQL NULL"},
	{name: "timestamp", typ: "timestamp", values: lit("2024-01-02 03:04:05", "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.1",
		"infinity", "-infinity", "0044-03-15 12:00 BC", "4713-01-01 00:00 BC", "294276-12-31 23:59:59.999999", "10000-01-01", "1999-12-31 23:59:59.999999")},
	{name: "timestamptz", typ: "timestamptz", values: lit("2024-01-02 03:04:05+00", "2024-01-02 03:04:05.123456-07", "2024-06-01 12:00+05:30",
		"infinity", "-infinity", "0044-03-15 12:00 BC", "4713-01-01 00:00+00 BC", "294276-12-31 23:59:59.999999+00", "10000-01-01", "1900-01-01 00:00+00:53:28")},
	{name: "date", typ: "date", values: lit("2024-02-29", "infinity", "-infinity", "0001-01-01 BC", "5874897-12-31", "4713-01-01 BC")},
	{name: "time", typ: "time", values: lit("00:00", "23:59:59.999999", "24:00:00", "12:34:56.5")},
	{name: "timetz", typ: "timetz", values: lit("12:00+05:30", "12:00-08", "12:00:00+05:30:15", "00:00+00")},
	{name: "interval", typ: "interval", values: lit("1 year 2 mons 3 days 04:05:06.789", "-1 day", "0", "1 mon -1 day", "178000000 years", "-00:00:00.000001", "1 day -01:00")},
	{name: "uuid", typ: "uuid", values: lit("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000")},
	{name: "bytea", typ: "bytea", values: lit("", `\x00ff`, "abc", `\x5c22`)},
	{name: "inet", typ: "inet", values: lit("192.168.0.1", "10.0.0.0/8", "::1", "2001:db8::1/64")},
	{name: "cidr", typ: "cidr", values: lit("10.0.0.0/8", "2001:db8::/32")},
	{name: "macaddr", typ: "macaddr", values: lit("08:00:2b:01:02:03")},
	{name: "macaddr8", typ: "macaddr8", values: lit("08:00:2b:01:02:03:04:05")},
	{name: "money", typ: "money", values: lit("1234.56", "-1", "0")},
	{name: "bit", typ: "bit(3)", values: []string{"B'101'", "B'000'"}},
	{name: "varbit", typ: "varbit", values: []string{"B''", "B'1101'"}},
	{name: "tsvector", typ: "tsvector", values: lit("a fat cat:1A,2 sat", `'it''s' "q"`, "")},
	{name: "tsquery", typ: "tsquery", values: lit("fat & (rat | !cat)", "a:* <-> b")},
	{name: "point", typ: "point", values: lit("(1,2)", "(-1.5,1e300)")},
	{name: "line", typ: "line", values: lit("{1,2,3}")},
	{name: "lseg", typ: "lseg", values: lit("[(1,2),(3,4)]")},
	{name: "box", typ: "box", values: lit("((1,2),(3,4))")},
	{name: "path", typ: "path", values: lit("[(1,2),(3,4)]", "((1,2),(3,4))")},
	{name: "polygon", typ: "polygon", values: lit("((0,0),(1,1),(1,0))")},
	{name: "circle", typ: "circle", values: lit("<(1,2),3>")},
	{name: "int4range", typ: "int4range", values: lit("[1,10)", "empty", "(,5]")},
	{name: "int8range", typ: "int8range", values: lit("[1,10]")},
	{name: "numrange", typ: "numrange", values: lit("[1.5,2.50]")},
	{name: "tsrange", typ: "tsrange", values: lit("[2024-01-01,2024-02-01)")},
	{name: "tstzrange", typ: "tstzrange", values: lit(`["2024-01-01 00:00+00",infinity)`)},
	{name: "daterange", typ: "daterange", values: lit("[2024-01-01,)")},
	{name: "floatrange", typ: "floatrange", values: lit("[1.5,2.5)")},
	{name: "int4multirange", typ: "int4multirange", values: lit("{[1,3),[5,7)}", "{}")},
	{name: "datemultirange", typ: "datemultirange", values: lit("{[2024-01-01,2024-02-01)}")},
	{name: "nummultirange", typ: "nummultirange", values: lit("{[1.5,2)}")},
	{name: "xml", typ: "xml", values: lit("<a>b &amp; c</a>", "text node", `<?xml version="1.0"?><x a="1"/>`)},
	{name: "pg_lsn", typ: "pg_lsn", values: lit("16/B374D848")},
	{name: "regclass", typ: "regclass", values: lit("pg_class", "weird_cols")},
	{name: "regtype user", typ: "regtype", values: lit("mood", "inner_t[]")},
	{name: "regtype", typ: "regtype", values: lit("integer")},
	{name: "int2vector", typ: "int2vector", values: lit("1 2 3", ""), lossy: "json_populate_record cannot build an empty int2vector"},
	{name: "oidvector", typ: "oidvector", values: lit("1 2", ""), lossy: "json_populate_record cannot build an empty oidvector"},
	{name: "txid_snapshot", typ: "txid_snapshot", values: lit("10:20:10,14,15")},
	{name: "pg_snapshot", typ: "pg_snapshot", values: lit("10:20:10,14,15")},
	{name: "xid8", typ: "xid8", values: lit("42")},
	{name: "int4[]", typ: "int4[]", values: lit("{}", "{1,2,NULL}", "{{1,2},{3,4}}", "[2:3]={1,2}", "[0:1][1:2]={{1,2},{3,4}}", "{{{1}},{{2}}}", "{NULL}"), lossy: "to_jsonb drops array lower bounds"},
	{name: "int8[]", typ: "int8[]", values: lit("{-9223372036854775808,9223372036854775807}")},
	{name: "int2[]", typ: "int2[]", values: lit("{1,-1}")},
	{name: "oid[]", typ: "oid[]", values: lit("{1,4294967295}")},
	{name: "text[]", typ: "text[]", values: []string{`ARRAY['a b','NULL',NULL,'','"q"','back\slash','x,y','{}','é',' ', E'\n', 'null', 'Null', '\x01']`, "'{}'"}},
	{name: "text[][]", typ: "text[]", values: []string{`ARRAY[['a','b'],['{','}']]`}},
	{name: "float8[]", typ: "float8[]", values: lit("{NaN,1e308,-0,Infinity,-Infinity,0.1,5e-324}"), lossy: "to_jsonb writes -0 as 0"},
	{name: "float4[]", typ: "float4[]", values: lit("{NaN,1.1,-0}"), lossy: "to_jsonb writes -0 as 0"},
	{name: "numeric[]", typ: "numeric[]", values: lit("{1.50,NaN,-0.0,Infinity}")},
	{name: "bool[]", typ: "bool[]", values: lit("{t,f,NULL}")},
	{name: "json[]", typ: "json[]", values: []string{`ARRAY['{"b":1,"a":2}', '"s"', '[1, 2.0e1]', 'null', NULL]::json[]`}, lossy: "json becomes jsonb; JSON null elements read back as NULL"},
	{name: "jsonb[]", typ: "jsonb[]", values: []string{`ARRAY['{"b":1,"a":2}', '"s"', '[1, 2.0e1]', 'null', NULL]::jsonb[]`}, lossy: "JSON null elements read back as NULL"},
	{name: "timestamptz[]", typ: "timestamptz[]", values: []string{`ARRAY['2024-01-02 03:04:05+00','infinity','0044-03-15 12:00 BC']::timestamptz[]`}},
	{name: "timestamp[]", typ: "timestamp[]", values: []string{`ARRAY['2024-01-02 03:04:05.5','-infinity']::timestamp[]`}},
	{name: "date[]", typ: "date[]", values: lit("{2024-01-01,infinity,NULL}")},
	{name: "time[]", typ: "time[]", values: lit("{12:00,23:59:59.5}")},
	{name: "timetz[]", typ: "timetz[]", values: lit("{12:00+05:30}")},
	{name: "interval[]", typ: "interval[]", values: lit(`{"1 day","-1 mons"}`)},
	{name: "uuid[]", typ: "uuid[]", values: lit("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}")},
	{name: "bytea[]", typ: "bytea[]", values: []string{`ARRAY['\x00'::bytea, '', 'a"b']`}},
	{name: "box[]", typ: "box[]", values: []string{`ARRAY['((1,2),(3,4))'::box, '((0,0),(1,1))']`}},
	{name: "point[]", typ: "point[]", values: lit(`{"(1,2)","(3,4)"}`)},
	{name: "polygon[]", typ: "polygon[]", values: lit(`{"((0,0),(1,1),(1,0))"}`)},
	{name: "inet[]", typ: "inet[]", values: lit("{10.0.0.1,::1/128}")},
	{name: "money[]", typ: "money[]", values: lit("{1.5,-2}")},
	{name: "varbit[]", typ: "varbit[]", values: lit("{101,\"\"}")},
	{name: "int4range[]", typ: "int4range[]", values: lit(`{"[1,2)",empty}`)},
	{name: "tsvector[]", typ: "tsvector[]", values: []string{`ARRAY['a b'::tsvector]`}},
	{name: "xml[]", typ: "xml[]", values: []string{`ARRAY['<a x="1"/>'::xml]`}},
	{name: "char[]", typ: `"char"[]`, values: []string{`ARRAY['a'::"char", '"', ',']`}},
	{name: "name[]", typ: "name[]", values: lit(`{a,"b c"}`)},
	{name: "bpchar[]", typ: "char(3)[]", values: lit("{a,bc}")},
	{name: "varchar[]", typ: "varchar[]", values: lit(`{a,"b,c"}`)},
	{name: "mood", typ: "mood", values: lit("sad", "happy", `a "quoted", label`, "with space", "NULL", "é")},
	{name: "mood[]", typ: "mood[]", values: []string{`ARRAY['sad','a "quoted", label','NULL','with space',NULL]::mood[]`}},
	{name: "posint", typ: "posint", values: []string{"1", "2147483647"}},
	{name: "dom_dom", typ: "dom_dom", values: []string{"5"}},
	{name: "short_text", typ: "short_text", values: lit("hi", `"q"`)},
	{name: "js domain", typ: "js", values: lit(`{"b":1,"a":[1.0e1]}`), lossy: "json becomes jsonb"},
	{name: "utc_ts domain", typ: "utc_ts", values: lit("2024-01-02 03:04:05+02")},
	{name: "int_list domain over array", typ: "int_list", values: lit("{1,2}", "[5:5]={7}"), lossy: "to_jsonb drops array lower bounds"},
	{name: "boxdom", typ: "boxdom", values: lit("((1,2),(3,4))")},
	{name: "float_dom", typ: "float_dom", values: lit("1e308", "NaN")},
	{name: "posint[]", typ: "posint[]", values: lit("{1,2}")},
	{name: "js[]", typ: "js[]", values: []string{`ARRAY['{"b":1,"a":2}']::js[]`}, lossy: "json becomes jsonb"},
	{name: "boxdom[]", typ: "boxdom[]", values: []string{`ARRAY['((1,2),(3,4))'::boxdom, '((0,0),(1,1))']`}},
	{name: "inner_t", typ: "inner_t", values: []string{"ROW(1,'x')", "ROW(NULL,NULL)", "ROW(2,'')", `ROW(3,'a "b", (c) \d')`, "ROW(4,E'tab\\there')", "ROW(5,'NULL')", "ROW(-1,' ')"}},
	{name: "outer_t", typ: "outer_t", values: []string{
		`ROW(ROW(1,'a b'), '2024-01-02 03:04:05+00', '{1,NULL}', '{"b":[1,2.0],"a":{}}', 'a "quoted", label', 1.50, ARRAY[ROW(1,'x'),ROW(NULL,'y"z'),NULL]::inner_t[], '-0', '((1,2),(3,4))')`,
		`ROW(NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL)`,
		`ROW(ROW(NULL,NULL), 'infinity', '{}', '"s"', 'sad', 'NaN', '{}', 'NaN', NULL)`,
	}, lossy: "json becomes jsonb; -0 becomes 0"},
	{name: "dropped_t", typ: "dropped_t", values: []string{"ROW(1, 2.5)", "ROW(NULL, 'NaN')"}},
	{name: "empty_t", typ: "empty_t", values: []string{"ROW()::empty_t"}},
	{name: "inner_dom", typ: "inner_dom", values: []string{"ROW(1,'a')"}},
	{name: "inner_t[]", typ: "inner_t[]", values: []string{`ARRAY[ROW(1,'a'), ROW(NULL,'b,c'), NULL, ROW(2, '')]::inner_t[]`, "'{}'", `ARRAY[[ROW(1,'a')],[ROW(2,'b')]]::inner_t[]`}},
	{name: "outer_t[]", typ: "outer_t[]", values: []string{`ARRAY[ROW(ROW(1,'(x)'), '2024-01-02 03:04:05+00', '{1}', '{"k":"v"}', 'ok', 1, ARRAY[ROW(1,'"')]::inner_t[], 1.5, '((0,0),(1,1))')]::outer_t[]`}, lossy: "json becomes jsonb"},
	{name: "weird column names", table: "weird_cols", values: []string{
		`(1, 'x', true, '{"k":1, "a":0}', '2024-01-01', 1.5, 'q', 'two')`,
	}, lossy: "json becomes jsonb"},
}

// TestToJSONBEquality streams every case's rows through a real pgoutput
// slot, encodes them and compares with the server's own to_jsonb, then
// checks that json_populate_record gives the row back.
func TestToJSONBEquality(t *testing.T) {
	ctx := context.Background()
	url, ref := newDatabase(t, ctx, map[string]string{"TimeZone": "UTC"}, schemaSQL)
	var ddl strings.Builder
	tables := make([]string, len(cases))
	for i, c := range cases {
		if c.table != "" {
			tables[i] = c.table
			continue
		}
		tables[i] = "t" + strconv.Itoa(i)
		fmt.Fprintf(&ddl, "CREATE TABLE %s (id serial PRIMARY KEY, c %s);\n", tables[i], c.typ)
	}
	ddl.WriteString("CREATE PUBLICATION p FOR ALL TABLES;\n")
	if _, err := ref.Exec(ctx, ddl.String()); err != nil {
		t.Fatalf("tables: %v", err)
	}
	repl := replConn(t, ctx, url, pgjson.SessionSettings(), "s")
	if err := pgjson.CheckParameterStatus(repl.ParameterStatus); err != nil {
		t.Fatalf("replication session: %v", err)
	}

	// Insert in case order, so the stream comes back in the same order.
	type row struct {
		c     int
		value string
	}
	var rows []row
	batch := &pgx.Batch{}
	for i, c := range cases {
		vals := c.values
		if c.table == "" {
			vals = append(vals[:len(vals):len(vals)], "NULL")
		}
		for _, v := range vals {
			if c.table != "" {
				batch.Queue(fmt.Sprintf("INSERT INTO %s VALUES %s", tables[i], v))
			} else {
				batch.Queue(fmt.Sprintf("INSERT INTO %s (c) VALUES (%s)", tables[i], v))
			}
			rows = append(rows, row{c: i, value: v})
		}
	}
	if err := ref.SendBatch(ctx, batch).Close(); err != nil {
		t.Fatalf("insert: %v", err)
	}
	changes := stream(t, ctx, repl, "s", "p", len(rows))

	types := pgjson.NewTypeMap()
	encoders := map[uint32]*pgjson.Encoder{}
	seq := map[string]int{}
	for n, ch := range changes {
		r := rows[n]
		c := cases[r.c]
		if ch.rel.RelationName != tables[r.c] {
			t.Fatalf("row %d: streamed from %s, inserted into %s", n, ch.rel.RelationName, tables[r.c])
		}
		seq[tables[r.c]]++
		t.Run(c.name+"/"+strconv.Itoa(seq[tables[r.c]]), func(t *testing.T) {
			enc := encoders[ch.rel.RelationID]
			if enc == nil {
				var err error
				if enc, err = types.Encoder(ctx, ref, pgjson.ColumnsOf(ch.rel)); err != nil {
					t.Fatalf("encoder: %v", err)
				}
				encoders[ch.rel.RelationID] = enc
			}
			got, encErr := enc.AppendTuple(nil, ch.tuple)
			where := "id = " + string(ch.tuple.Columns[0].Data)
			if c.table != "" {
				where = "ctid = (SELECT ctid FROM " + c.table + " OFFSET " + strconv.Itoa(seq[tables[r.c]]-1) + " LIMIT 1)"
			}
			var want string
			refErr := ref.QueryRow(ctx, "SELECT to_jsonb(t)::text FROM "+tables[r.c]+" t WHERE "+where).Scan(&want)
			if refErr != nil {
				if encErr == nil {
					t.Fatalf("value %s: to_jsonb fails (%v) but we encoded %s", r.value, refErr, got)
				}
				return
			}
			if encErr != nil {
				t.Fatalf("value %s (text %q): %v; to_jsonb gives %s", r.value, colTexts(ch), encErr, want)
			}
			if string(got) != want {
				t.Fatalf("value %s (text %q):\ngot  %s\nwant %s", r.value, colTexts(ch), got, want)
			}
			checkRoundTrip(t, ctx, ref, tables[r.c], where, got, c.lossy)
		})
	}
}

// checkRoundTrip checks that json_populate_record(NULL::table, got) is the
// row. For a lossy case it may differ (or fail), but then to_jsonb of what
// it loads must be got again: the loss is to_jsonb's, not ours.
func checkRoundTrip(t *testing.T, ctx context.Context, ref *pgx.Conn, table, where string, got []byte, lossy string) {
	t.Helper()
	var same bool
	err := ref.QueryRow(ctx, "SELECT json_populate_record(NULL::"+table+", $1::json)::text = t::text FROM "+table+" t WHERE "+where, string(got)).Scan(&same)
	switch {
	case err != nil && lossy == "":
		t.Fatalf("json_populate_record(%s): %v", got, err)
	case err != nil:
		t.Logf("json_populate_record cannot load %s (%s): %v", got, lossy, err)
	case same:
	case lossy == "":
		t.Fatalf("json_populate_record(%s) is not the row", got)
	default:
		var again string
		if err := ref.QueryRow(ctx, "SELECT to_jsonb(json_populate_record(NULL::"+table+", $1::json))::text", string(got)).Scan(&again); err != nil {
			t.Fatal(err)
		}
		if again != string(got) {
			t.Fatalf("json_populate_record(%s) is not the row (%s) and to_jsonb of it is %s", got, lossy, again)
		}
	}
}

func colTexts(ch change) []string {
	var out []string
	for _, c := range ch.tuple.Columns {
		if c.DataType == 'n' {
			out = append(out, "NULL")
		} else {
			out = append(out, string(c.Data))
		}
	}
	return out
}

// newDatabase creates a database, connects to it with the run-time
// parameters params and runs schema there (a test's tables and
// publication). ref is that connection.
func newDatabase(t *testing.T, ctx context.Context, params map[string]string, schema string) (url string, ref *pgx.Conn) {
	t.Helper()
	url = pgtest.NewDatabase(t)
	ref = connect(t, ctx, url, params)
	if _, err := ref.Exec(ctx, schema); err != nil {
		t.Fatalf("schema: %v", err)
	}
	return url, ref
}

// parseConfig is url's configuration with params as run-time (startup)
// parameters.
func parseConfig(t testing.TB, url string, params map[string]string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	return cfg
}

func connect(t testing.TB, ctx context.Context, url string, params map[string]string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.ConnectConfig(ctx, parseConfig(t, url, params))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
