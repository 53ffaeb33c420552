package pgjson

import (
	"errors"
	"fmt"
	"sync"
)

// ErrTypeChanged is returned (wrapped) when a composite value does not have
// the attributes its cached type has: the type was altered since it was
// loaded. Invalidate the TypeMap, build a new Encoder and encode again.
var ErrTypeChanged = errors.New("type changed since it was loaded")

// state is the scratch space of one encoding call.
type state struct {
	scratch []byte // unescaped array elements and composite fields
	spans   []span // composite fields being encoded, innermost last
	json    jsonNormalizer
}

// span locates a composite field's text: in the value itself or in scratch.
type span struct {
	off, n    int
	inScratch bool
	null      bool
}

var statePool = sync.Pool{New: func() any { return new(state) }}

func getState() *state { return statePool.Get().(*state) }

func putState(s *state) {
	const keep = 64 << 10 // don't pin buffers grown by a huge value
	if cap(s.scratch) > keep || cap(s.json.tmp) > keep || cap(s.json.keys) > keep {
		return
	}
	s.scratch, s.spans = s.scratch[:0], s.spans[:0]
	statePool.Put(s)
}

// appendValue appends the to_jsonb form of a non-NULL value of type t given
// as its PostgreSQL text output s.
func (st *state) appendValue(dst []byte, t *typeInfo, s []byte) ([]byte, error) {
	switch t.kind {
	case kindText:
		return appendString(dst, s), nil
	case kindInt:
		return append(dst, s...), nil
	case kindBool:
		switch {
		case len(s) == 1 && s[0] == 't':
			return append(dst, "true"...), nil
		case len(s) == 1 && s[0] == 'f':
			return append(dst, "false"...), nil
		}
		return dst, fmt.Errorf("invalid boolean output %q", s)
	case kindNumeric:
		if len(s) > 0 && (s[0] == 'N' || s[len(s)-1] == 'y') { // NaN, Infinity, -Infinity
			return appendString(dst, s), nil
		}
		return append(dst, s...), nil
	case kindFloat:
		if len(s) > 0 && (s[0] == 'N' || s[len(s)-1] == 'y') {
			return appendString(dst, s), nil
		}
		return appendNumeric(dst, s)
	case kindJSON:
		return st.json.normalize(dst, s)
	case kindJSONB:
		return append(dst, s...), nil
	case kindTimestamp:
		return appendTimestamp(dst, s, false), nil
	case kindTimestampTZ:
		return appendTimestamp(dst, s, true), nil
	case kindArray:
		return st.appendArray(dst, t, s)
	case kindVector:
		return st.appendVector(dst, t, s)
	case kindComposite:
		return st.appendComposite(dst, t, s)
	}
	return dst, fmt.Errorf("pgjson: type %s: %w", t, ErrUnsupportedType)
}

// appendArray converts array_out text: an optional dimension decoration
// ("[2:3]=", dropped: to_jsonb ignores lower bounds), nested braces,
// elements separated by the element type's delimiter, NULL for null, and
// double quotes with backslash escapes around elements that need them.
func (st *state) appendArray(dst []byte, t *typeInfo, s []byte) ([]byte, error) {
	i := 0
	if len(s) > 0 && s[0] == '[' {
		for i < len(s) && s[i] != '=' {
			i++
		}
		i++
	}
	if i >= len(s) || s[i] != '{' {
		return dst, fmt.Errorf("invalid %s output %q", t.name, s)
	}
	dst, end, err := st.appendArrayLevel(dst, t, s, i)
	if err != nil {
		return dst, err
	}
	if end != len(s) {
		return dst, fmt.Errorf("invalid %s output %q", t.name, s)
	}
	return dst, nil
}

func (st *state) appendArrayLevel(dst []byte, t *typeInfo, s []byte, i int) ([]byte, int, error) {
	bad := func() ([]byte, int, error) { return dst, 0, fmt.Errorf("invalid %s output %q", t.name, s) }
	i++ // '{'
	dst = append(dst, '[')
	if i < len(s) && s[i] == '}' {
		return append(dst, ']'), i + 1, nil
	}
	delim := t.elem.delim
	for first := true; ; first = false {
		if i >= len(s) {
			return bad()
		}
		if !first {
			dst = append(dst, ',', ' ')
		}
		var err error
		switch s[i] {
		case '{':
			if dst, i, err = st.appendArrayLevel(dst, t, s, i); err != nil {
				return dst, 0, err
			}
		case '"':
			off := len(st.scratch)
			i++
			for i < len(s) && s[i] != '"' {
				if s[i] == '\\' {
					i++
					if i >= len(s) {
						return bad()
					}
				}
				st.scratch = append(st.scratch, s[i])
				i++
			}
			if i >= len(s) {
				return bad()
			}
			i++
			elem := st.scratch[off:]
			dst, err = st.appendValue(dst, t.elem, elem)
			st.scratch = st.scratch[:off]
			if err != nil {
				return dst, 0, err
			}
		default:
			start := i
			for i < len(s) && s[i] != delim && s[i] != '}' {
				i++
			}
			elem := s[start:i]
			if string(elem) == "NULL" {
				dst = append(dst, "null"...)
			} else if dst, err = st.appendValue(dst, t.elem, elem); err != nil {
				return dst, 0, err
			}
		}
		if i >= len(s) {
			return bad()
		}
		switch s[i] {
		case delim:
			i++
		case '}':
			return append(dst, ']'), i + 1, nil
		default:
			return bad()
		}
	}
}

// appendVector converts int2vector/oidvector output ("1 2 3").
func (st *state) appendVector(dst []byte, t *typeInfo, s []byte) ([]byte, error) {
	dst = append(dst, '[')
	n := 0
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] != ' ' {
			j++
		}
		if j > i {
			if n > 0 {
				dst = append(dst, ',', ' ')
			}
			var err error
			if dst, err = st.appendValue(dst, t.elem, s[i:j]); err != nil {
				return dst, err
			}
			n++
		}
		i = j + 1
	}
	return append(dst, ']'), nil
}

// appendComposite converts record_out text: "(" fields ")" separated by
// commas, an empty field for NULL, double quotes (doubled inside) and
// backslash escapes around fields that need them; the object's keys are
// the attribute names in jsonb order.
func (st *state) appendComposite(dst []byte, t *typeInfo, s []byte) ([]byte, error) {
	bad := func() ([]byte, error) { return dst, fmt.Errorf("invalid %s output %q", t.name, s) }
	if len(s) < 2 || s[0] != '(' {
		return bad()
	}
	if len(t.fields) == 0 && len(s) == 2 && s[1] == ')' {
		return append(dst, '{', '}'), nil
	}
	base := len(st.spans)
	defer func() { st.spans = st.spans[:base] }()
	scratchBase := len(st.scratch)
	defer func() { st.scratch = st.scratch[:scratchBase] }()
	i := 1
	for {
		if i >= len(s) {
			return bad()
		}
		if s[i] == ',' || s[i] == ')' {
			st.spans = append(st.spans, span{null: true})
		} else {
			start := i
			plainText := true
			for i < len(s) && s[i] != ',' && s[i] != ')' {
				if s[i] == '"' || s[i] == '\\' {
					plainText = false
					break
				}
				i++
			}
			if plainText {
				st.spans = append(st.spans, span{off: start, n: i - start})
			} else {
				i = start
				off := len(st.scratch)
				inQuote := false
				for inQuote || (s[i] != ',' && s[i] != ')') {
					c := s[i]
					i++
					switch {
					case c == '\\':
						if i >= len(s) {
							return bad()
						}
						st.scratch = append(st.scratch, s[i])
						i++
					case c == '"' && !inQuote:
						inQuote = true
					case c == '"' && i < len(s) && s[i] == '"':
						st.scratch = append(st.scratch, '"')
						i++
					case c == '"':
						inQuote = false
					default:
						st.scratch = append(st.scratch, c)
					}
					if i >= len(s) {
						return bad()
					}
				}
				st.spans = append(st.spans, span{off: off, n: len(st.scratch) - off, inScratch: true})
			}
		}
		if i >= len(s) {
			return bad()
		}
		if s[i] == ')' {
			i++
			break
		}
		i++ // ','
	}
	if i != len(s) {
		return bad()
	}
	fields := st.spans[base:]
	if len(fields) != len(t.fields) {
		return dst, fmt.Errorf("pgjson: type %s has %d attributes but its value has %d: %w", t, len(t.fields), len(fields), ErrTypeChanged)
	}
	dst = append(dst, '{')
	for n, fi := range t.order {
		if n > 0 {
			dst = append(dst, ',', ' ')
		}
		f := &t.fields[fi]
		dst = append(dst, f.key...)
		sp := st.spans[base+fi]
		if sp.null {
			dst = append(dst, "null"...)
			continue
		}
		var text []byte
		if sp.inScratch {
			text = st.scratch[sp.off : sp.off+sp.n]
		} else {
			text = s[sp.off : sp.off+sp.n]
		}
		var err error
		if dst, err = st.appendValue(dst, f.typ, text); err != nil {
			return dst, err
		}
	}
	return append(dst, '}'), nil
}
