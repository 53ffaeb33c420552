package pgjson

import "strconv"

// kind is how to_jsonb renders a type (after looking through domains); it
// mirrors json_categorize_type's categories plus the text forms we parse.
type kind uint8

const (
	kindText        kind = iota // JSON string of the output text (JSONTYPE_OTHER)
	kindBool                    // true / false
	kindInt                     // int2/4/8: the output text is the number
	kindNumeric                 // numeric: number, or string for NaN/±Infinity
	kindFloat                   // float4/8: number via numeric_in, or string
	kindJSON                    // json: parsed into jsonb
	kindJSONB                   // jsonb: its output text as is
	kindTimestamp               // XSD form of the ISO output
	kindTimestampTZ             // XSD form of the ISO output, with zone
	kindArray                   // array_out text → JSON array
	kindVector                  // int2vector/oidvector: space-separated array
	kindComposite               // record_out text → JSON object
)

// typeInfo says how to encode one type; it is immutable once built.
type typeInfo struct {
	oid    uint32
	name   string // qualified unless in pg_catalog
	kind   kind
	delim  byte      // the type's typdelim (used for arrays of it)
	elem   *typeInfo // kindArray, kindVector
	fields []field   // kindComposite, in attribute order
	order  []int     // kindComposite: field indexes in jsonb key order
}

type field struct {
	name string
	key  []byte // `"name": ` as written in the output
	typ  *typeInfo
}

func (t *typeInfo) String() string {
	return t.name + " (oid " + strconv.FormatUint(uint64(t.oid), 10) + ")"
}

// keyOrder returns indexes of names in jsonb key order (length, then bytes).
func keyOrder(names []string) []int {
	idx := make([]int, len(names))
	for i := range idx {
		idx[i] = i
	}
	// Insertion sort: rows have few columns and this runs once per relation.
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && keyLess(names[idx[j]], names[idx[j-1]]); j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	return idx
}

func keyLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func renderKey(name string) []byte {
	k := appendString(nil, []byte(name))
	return append(k, ':', ' ')
}

// Built-in type OIDs (pg_type.dat) whose category is not plain text, and
// the common arrays. Anything else is read from the catalog by Load.
var builtinTypes = func() map[uint32]*typeInfo {
	m := map[uint32]*typeInfo{}
	scalar := func(oid uint32, name string, k kind) *typeInfo {
		t := &typeInfo{oid: oid, name: name, kind: k, delim: ','}
		m[oid] = t
		return t
	}
	array := func(oid uint32, elem *typeInfo) {
		m[oid] = &typeInfo{oid: oid, name: elem.name + "[]", kind: kindArray, delim: ',', elem: elem}
	}
	scalars := []struct {
		oid, arr uint32
		name     string
		k        kind
	}{
		{16, 1000, "boolean", kindBool},
		{17, 1001, "bytea", kindText},
		{18, 1002, `"char"`, kindText},
		{19, 1003, "name", kindText},
		{20, 1016, "bigint", kindInt},
		{21, 1005, "smallint", kindInt},
		{23, 1007, "integer", kindInt},
		{25, 1009, "text", kindText},
		{26, 1028, "oid", kindText},
		{114, 199, "json", kindJSON},
		{142, 143, "xml", kindText},
		{650, 651, "cidr", kindText},
		{700, 1021, "real", kindFloat},
		{701, 1022, "double precision", kindFloat},
		{774, 775, "macaddr8", kindText},
		{790, 791, "money", kindText},
		{829, 1040, "macaddr", kindText},
		{869, 1041, "inet", kindText},
		{1042, 1014, "character", kindText},
		{1043, 1015, "character varying", kindText},
		{1082, 1182, "date", kindText},
		{1083, 1183, "time without time zone", kindText},
		{1114, 1115, "timestamp without time zone", kindTimestamp},
		{1184, 1185, "timestamp with time zone", kindTimestampTZ},
		{1186, 1187, "interval", kindText},
		{1266, 1270, "time with time zone", kindText},
		{1560, 1561, "bit", kindText},
		{1562, 1563, "bit varying", kindText},
		{1700, 1231, "numeric", kindNumeric},
		{2950, 2951, "uuid", kindText},
		{3220, 3221, "pg_lsn", kindText},
		{3614, 3643, "tsvector", kindText},
		{3615, 3645, "tsquery", kindText},
		{3802, 3807, "jsonb", kindJSONB},
		{3904, 3905, "int4range", kindText},
		{3906, 3907, "numrange", kindText},
		{3908, 3909, "tsrange", kindText},
		{3910, 3911, "tstzrange", kindText},
		{3912, 3913, "daterange", kindText},
		{3926, 3927, "int8range", kindText},
		{600, 1017, "point", kindText},
		{601, 1018, "lseg", kindText},
		{602, 1019, "path", kindText},
		{604, 1027, "polygon", kindText},
		{628, 629, "line", kindText},
		{718, 719, "circle", kindText},
	}
	for _, s := range scalars {
		array(s.arr, scalar(s.oid, s.name, s.k))
	}
	box := scalar(603, "box", kindText)
	box.delim = ';'
	m[1020] = &typeInfo{oid: 1020, name: "box[]", kind: kindArray, delim: ';', elem: box}
	m[22] = &typeInfo{oid: 22, name: "int2vector", kind: kindVector, delim: ',', elem: m[21]}
	m[30] = &typeInfo{oid: 30, name: "oidvector", kind: kindVector, delim: ',', elem: m[26]}
	return m
}()
