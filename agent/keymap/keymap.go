// Package keymap maps rows of published tables to store keys through key
// templates such as "/Index/{index_id}/{id}".
package keymap

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/kvdriver"
)

// DefaultTemplates are the Bagger-compatible keys.
func DefaultTemplates() map[string]string {
	return map[string]string{
		"storage.config":            "/Config/{key}",
		"storage.postgres_instance": "/PostgresInstance/{host}/{port}",
		"storage.servermap":         "/Servermap",
		"storage.dimension":         "/Dimension/{id}",
		"storage.index":             "/Index/{id}",
		"storage.index_field":       "/Index/{index_id}/{id}",
	}
}

// Mapper maps rows of published tables to store keys. Safe for concurrent use
// (it is immutable after New).
type Mapper struct {
	prefix    string
	templates map[string]*Template
}

// Template is one compiled key template.
type Template struct {
	table string
	segs  []segment
	cols  []string
}

type segment struct {
	lit string
	col string
	isC bool
}

// New builds a mapper; every key is under prefix. templates override or
// extend the defaults (keyed "schema.table"). Templates whose shapes could
// produce the same key are rejected.
func New(prefix string, templates map[string]string) (*Mapper, error) {
	prefix, err := CleanPrefix(prefix)
	if err != nil {
		return nil, err
	}
	all := DefaultTemplates()
	for k, v := range templates {
		all[k] = v
	}
	m := &Mapper{prefix: prefix, templates: map[string]*Template{}}
	shapes := map[string]string{}
	for table, src := range all {
		t, err := compile(table, prefix, src)
		if err != nil {
			return nil, err
		}
		shape := t.shape()
		if other, ok := shapes[shape]; ok {
			return nil, fmt.Errorf("keymap: templates of %s and %s can produce the same key", other, table)
		}
		shapes[shape] = table
		m.templates[table] = t
	}
	return m, nil
}

// reservedSegment is agent.ReservedSegment: <prefix>/.lenkwerk holds the
// agent's own keys (checkpoints).
const reservedSegment = ".lenkwerk"

// CheckPrefix reports whether prefix can stand before every key: what
// CleanPrefix accepts.
func CheckPrefix(prefix string) error {
	_, err := CleanPrefix(prefix)
	return err
}

// CleanPrefix returns the agent's key prefix in the form keys are built
// from: "" or a valid store key (kvdriver.ValidateKey: no empty, "." or
// ".." segment, valid UTF-8, no NUL) without a .lenkwerk segment, since a
// prefix there would write rows among the agent's own keys (of this
// prefix's agents or of those of a shorter one). One trailing '/' is
// dropped, as for every prefix (kvdriver.CleanPrefix): "/bagger/" is
// "/bagger", and "/" is the root, the same as "".
func CleanPrefix(prefix string) (string, error) {
	if prefix == "" || prefix == "/" {
		return "", nil
	}
	clean, err := kvdriver.CleanPrefix(prefix)
	if err != nil {
		return "", fmt.Errorf("keymap: invalid prefix: %w", err)
	}
	for _, seg := range strings.Split(clean[1:], "/") {
		if seg == reservedSegment {
			return "", fmt.Errorf("keymap: invalid prefix %q: segment %s is reserved for the agent's own keys", prefix, reservedSegment)
		}
	}
	return clean, nil
}

func compile(table, prefix, src string) (*Template, error) {
	if !strings.HasPrefix(src, "/") {
		return nil, fmt.Errorf("keymap: template of %s must start with '/': %q", table, src)
	}
	t := &Template{table: table}
	for _, p := range strings.Split(strings.TrimPrefix(prefix, "/"), "/") {
		if p != "" {
			t.segs = append(t.segs, segment{lit: p})
		}
	}
	for _, p := range strings.Split(src[1:], "/") {
		switch {
		case p == "":
			return nil, fmt.Errorf("keymap: template of %s has an empty segment: %q", table, src)
		case strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") && len(p) > 2:
			c := p[1 : len(p)-1]
			if strings.ContainsAny(c, "{}") {
				return nil, fmt.Errorf("keymap: template of %s has a bad column segment %q", table, p)
			}
			t.segs = append(t.segs, segment{col: c, isC: true})
			t.cols = append(t.cols, c)
		default:
			if strings.ContainsAny(p, "{}") || !utf8.ValidString(p) || strings.ContainsRune(p, 0) || p == "." || p == ".." {
				return nil, fmt.Errorf("keymap: template of %s has a bad literal segment %q", table, p)
			}
			if p == reservedSegment {
				return nil, fmt.Errorf("keymap: template of %s: segment %s is reserved for the agents' own keys", table, reservedSegment)
			}
			t.segs = append(t.segs, segment{lit: p})
		}
	}
	return t, nil
}

func (t *Template) shape() string {
	var b strings.Builder
	for _, s := range t.segs {
		b.WriteByte('/')
		if s.isC {
			b.WriteString("{}")
		} else {
			b.WriteString(s.lit)
		}
	}
	return b.String()
}

// ParseTemplates parses "schema.table=/Tmpl/{col},schema2.t2=/X/{a}/{b}".
func ParseTemplates(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		name, tmpl, ok := strings.Cut(e, "=")
		if !ok || !strings.Contains(name, ".") || tmpl == "" {
			return nil, fmt.Errorf("keymap: bad template entry %q (want schema.table=/Key/{col})", e)
		}
		out[name] = tmpl
	}
	return out, nil
}

// Table returns the compiled key template for a table; pk is its primary key
// columns in key order, used only when no template is configured. The caller
// checks Columns() against the relation.
func (m *Mapper) Table(schema, table string, pk []string) (*Template, error) {
	name := schema + "." + table
	if t, ok := m.templates[name]; ok {
		return t, nil
	}
	if len(pk) == 0 {
		return nil, fmt.Errorf("keymap: table %s has no template and no primary key", name)
	}
	src := "/" + EscapeSegment(schema) + "/" + EscapeSegment(table)
	for _, c := range pk {
		src += "/{" + c + "}"
	}
	return compile(name, m.prefix, src)
}

// Templates returns the mapper's configured templates (the defaults and the
// overrides), sorted by table name. Tables without a configured template get
// one from Table.
func (m *Mapper) Templates() []*Template {
	names := make([]string, 0, len(m.templates))
	for n := range m.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*Template, 0, len(names))
	for _, n := range names {
		out = append(out, m.templates[n])
	}
	return out
}

// Prefix is the key prefix every key of the mapper is under ("" for none).
func (m *Mapper) Prefix() string { return m.prefix }

// Table is the "schema.table" the template belongs to.
func (t *Template) Table() string { return t.table }

// String returns the template's key shape, "{col}" for column segments.
func (t *Template) String() string {
	var b strings.Builder
	for _, s := range t.segs {
		b.WriteByte('/')
		if s.isC {
			b.WriteString("{" + s.col + "}")
		} else {
			b.WriteString(s.lit)
		}
	}
	return b.String()
}

// ListPrefix is Prefix as a valid store prefix: "/" when the template starts
// with a column.
func (t *Template) ListPrefix() string {
	if p := t.Prefix(); p != "" {
		return p
	}
	return "/"
}

// Columns returns the columns the key needs, in template order.
func (t *Template) Columns() []string { return append([]string(nil), t.cols...) }

// Singleton reports a template with no column.
func (t *Template) Singleton() bool { return len(t.cols) == 0 }

// Prefix is the fixed leading part of the template's keys.
func (t *Template) Prefix() string {
	var b strings.Builder
	for _, s := range t.segs {
		if s.isC {
			break
		}
		b.WriteByte('/')
		b.WriteString(s.lit)
	}
	return b.String()
}

// Key builds the key from the row's values as JSON.
func (t *Template) Key(row map[string]json.RawMessage) (string, error) {
	var b strings.Builder
	for _, s := range t.segs {
		b.WriteByte('/')
		if !s.isC {
			b.WriteString(s.lit)
			continue
		}
		raw, ok := row[s.col]
		if !ok {
			return "", fmt.Errorf("keymap: %s: key column %q missing", t.table, s.col)
		}
		if err := t.appendValue(&b, s.col, raw); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// KeyValues builds the key from the values of the template's columns as
// JSON, vals[i] being the value of Columns()[i] (nil or null for NULL): the
// key Key gives for a row holding those values, without building the row.
func (t *Template) KeyValues(vals []json.RawMessage) (string, error) {
	if len(vals) != len(t.cols) {
		return "", fmt.Errorf("keymap: %s: %d key values, the template has %d columns", t.table, len(vals), len(t.cols))
	}
	var b strings.Builder
	i := 0
	for _, s := range t.segs {
		b.WriteByte('/')
		if !s.isC {
			b.WriteString(s.lit)
			continue
		}
		if err := t.appendValue(&b, s.col, vals[i]); err != nil {
			return "", err
		}
		i++
	}
	return b.String(), nil
}

// appendValue appends the key segment of column col's JSON value raw: a
// string's text, any other value's JSON text, escaped.
func (t *Template) appendValue(b *strings.Builder, col string, raw json.RawMessage) error {
	v := strings.TrimSpace(string(raw))
	if v == "null" || v == "" {
		return fmt.Errorf("keymap: %s: key column %q is NULL", t.table, col)
	}
	if plainString(v) {
		// Most keys; json.Unmarshal was a fifth of a table copy's
		// key building.
		v = v[1 : len(v)-1]
	} else if v[0] == '"' {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return fmt.Errorf("keymap: %s: key column %q: %w", t.table, col, err)
		}
		v = str
	}
	if v == "" || strings.ContainsRune(v, 0) || !utf8.ValidString(v) {
		return fmt.Errorf("keymap: %s: key column %q gives an invalid key segment", t.table, col)
	}
	b.WriteString(EscapeSegment(v))
	return nil
}

// Match reports whether a store key has this template's shape.
func (t *Template) Match(key string) bool {
	if !strings.HasPrefix(key, "/") {
		return false
	}
	parts := strings.Split(key[1:], "/")
	if len(parts) != len(t.segs) {
		return false
	}
	for i, s := range t.segs {
		if parts[i] == "" || (!s.isC && parts[i] != s.lit) {
			return false
		}
		if s.isC && parts[i] == reservedSegment {
			return false // a column's .lenkwerk is escaped: no row's key
		}
	}
	return true
}

// EscapeSegment escapes '%' and '/' so a key always splits back into its
// parts, and a whole segment "." or ".." (as %2E and %2E%2E: kvdriver
// refuses dot segments, which path-like consumers would resolve) or
// .lenkwerk (as %2Elenkwerk: a row whose key column is ".lenkwerk", under
// a template starting with that column, must not write among the agents'
// own keys).
func EscapeSegment(s string) string {
	switch s {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	case reservedSegment:
		return "%2E" + reservedSegment[1:]
	}
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(s)
}

// UnescapeSegment reverses EscapeSegment. It accepts only what
// EscapeSegment produces: %25 and %2F anywhere, %2E only as the whole
// segment %2E, %2E%2E or %2Elenkwerk.
func UnescapeSegment(s string) (string, error) {
	switch s {
	case "%2E":
		return ".", nil
	case "%2E%2E":
		return "..", nil
	case "%2E" + reservedSegment[1:]:
		return reservedSegment, nil
	}
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "%25"):
			b.WriteByte('%')
		case strings.HasPrefix(s[i:], "%2F"):
			b.WriteByte('/')
		default:
			return "", fmt.Errorf("keymap: bad escape in segment %q", s)
		}
		i += 2
	}
	return b.String(), nil
}

// plainString reports whether v is a JSON string without escapes, whose
// text between the quotes is the string itself (UTF-8 is checked by the
// caller).
func plainString(v string) bool {
	n := len(v)
	if n < 2 || v[0] != '"' || v[n-1] != '"' {
		return false
	}
	for i := 1; i < n-1; i++ {
		if c := v[i]; c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
