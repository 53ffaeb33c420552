package follow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
)

// reservedSegment is agent.ReservedSegment: the first key segment (under
// the prefix) of the agent's own keys. Not imported, so that the follower
// does not build the replication agent into itself.
const reservedSegment = ".lenkwerk"

// errIgnored marks a key of the agent's reserved subtree.
var errIgnored = errors.New("reserved key")

// router maps store keys to local tables through the templates.
type router struct {
	reserved string   // <prefix>/.lenkwerk
	tables   []*table // most literal segments first, then by name
}

func newRouter(prefix string, tables []*table) *router {
	r := &router{reserved: prefix + "/" + reservedSegment, tables: append([]*table(nil), tables...)}
	literals := func(t *table) int { return strings.Count(t.tmpl.String(), "/") - len(t.keyCols) }
	sort.SliceStable(r.tables, func(i, j int) bool {
		if li, lj := literals(r.tables[i]), literals(r.tables[j]); li != lj {
			return li > lj
		}
		return r.tables[i].name < r.tables[j].name
	})
	return r
}

// op is one store change routed to its table.
type op struct {
	typ   kvdriver.OpType
	key   string
	value []byte
	t     *table
	ident []byte   // JSON object of the key columns' values (from the key)
	extra []string // fields of value that are no columns of t
}

// route finds the key's table and the key columns' values. It returns
// errIgnored for reserved keys, and an error naming the problem for keys no
// template matches or whose segments cannot be read back.
func (r *router) route(typ kvdriver.OpType, key string, value []byte) (op, error) {
	if kvdriver.InPrefix(key, r.reserved) {
		return op{}, errIgnored
	}
	for _, t := range r.tables {
		if !t.tmpl.Match(key) {
			continue
		}
		o := op{typ: typ, key: key, value: value, t: t}
		ident, err := keyValues(t, key)
		if err != nil {
			return op{}, err
		}
		o.ident = ident
		if typ == kvdriver.OpPut {
			if o.extra, err = checkValue(t, key, value); err != nil {
				return op{}, err
			}
		}
		return o, nil
	}
	return op{}, fmt.Errorf("no key template matches key %q", key)
}

// keyValues reads the template's column segments of key back into a JSON
// object {"col": "segment", ...}; json_populate_record turns the strings
// into the columns' types.
func keyValues(t *table, key string) ([]byte, error) {
	shape := strings.Split(t.tmpl.String()[1:], "/")
	parts := strings.Split(key[1:], "/")
	if len(shape) != len(parts) {
		return nil, fmt.Errorf("key %q does not have the shape %s of %s", key, t.tmpl, t.name)
	}
	vals := map[string]string{}
	for i, s := range shape {
		if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
			continue
		}
		v, err := keymap.UnescapeSegment(parts[i])
		if err != nil {
			return nil, fmt.Errorf("key %q of %s: %w", key, t.name, err)
		}
		vals[s[1:len(s)-1]] = v
	}
	return json.Marshal(vals)
}

// checkValue accepts a put's value only if it is a JSON object whose key
// columns give back its key: otherwise the upsert would write a row under
// another key than the store's. It returns the value's fields that are not
// columns of the table (json_populate_record leaves them out).
func checkValue(t *table, key string, value []byte) (extra []string, err error) {
	var row map[string]json.RawMessage
	if err := json.Unmarshal(value, &row); err != nil || row == nil {
		return nil, fmt.Errorf("value of %q is not a JSON object (%s)", key, shorten(value))
	}
	for f := range row {
		if !t.cols[f] {
			extra = append(extra, f)
		}
	}
	sort.Strings(extra)
	if t.tmpl.Singleton() {
		return extra, nil
	}
	got, err := t.tmpl.Key(row)
	if err != nil {
		return nil, fmt.Errorf("value of %q: %w", key, err)
	}
	if got != key {
		return nil, fmt.Errorf("value of %q has the key columns of %q", key, got)
	}
	return extra, nil
}

// shorten bounds a value for a log line.
func shorten(v []byte) string {
	const max = 120
	v = bytes.TrimSpace(v)
	if len(v) > max {
		return string(v[:max]) + "…"
	}
	return string(v)
}
