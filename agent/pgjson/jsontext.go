package pgjson

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting so hostile input cannot exhaust the stack;
// PostgreSQL's own limit (max_stack_depth) is far lower in practice.
const maxJSONDepth = 10000

// NormalizeJSON appends to dst the text of src::json converted to jsonb, as
// to_jsonb (and jsonb_out) write it: object keys sorted by length and then
// bytewise, the last of duplicate keys kept, ", " and ": " separators,
// numbers as numeric_out(numeric_in(n)), strings with their escapes decoded
// and re-escaped like escape_json. src must be UTF-8. Like PostgreSQL it
// fails on \u0000, on unpaired surrogates and on numbers numeric cannot hold.
func NormalizeJSON(dst, src []byte) ([]byte, error) {
	var n jsonNormalizer
	return n.normalize(dst, src)
}

// jsonNormalizer holds scratch space reused across values.
type jsonNormalizer struct {
	src     []byte
	pos     int
	out     []byte
	keys    []byte   // decoded keys of the objects being parsed
	members []member // members of the objects being parsed, innermost last
	tmp     []byte
	depth   int
}

// member is one "key": value pair already written to out.
type member struct {
	keyOff, keyLen int // in keys
	start, end     int // in out, relative to the object's first member
	order          int
}

type jsonSyntaxError struct {
	pos int
	msg string
}

func (e *jsonSyntaxError) Error() string {
	return fmt.Sprintf("invalid json at byte %d: %s", e.pos, e.msg)
}

var errNulEscape = errors.New(`unsupported Unicode escape sequence \u0000 (cannot be converted to text)`)

func (n *jsonNormalizer) normalize(dst, src []byte) ([]byte, error) {
	n.src, n.pos, n.out, n.depth = src, 0, dst, 0
	n.keys, n.members = n.keys[:0], n.members[:0]
	n.skipSpace()
	if err := n.value(); err != nil {
		n.src = nil
		return dst, err
	}
	n.skipSpace()
	if n.pos != len(n.src) {
		err := n.syntax("unexpected data after the value")
		n.src = nil
		return dst, err
	}
	out := n.out
	n.src, n.out = nil, nil
	return out, nil
}

func (n *jsonNormalizer) syntax(msg string) error { return &jsonSyntaxError{pos: n.pos, msg: msg} }

func (n *jsonNormalizer) skipSpace() {
	for n.pos < len(n.src) {
		switch n.src[n.pos] {
		case ' ', '\t', '\n', '\r':
			n.pos++
		default:
			return
		}
	}
}

func (n *jsonNormalizer) value() error {
	if n.pos >= len(n.src) {
		return n.syntax("unexpected end of input")
	}
	switch c := n.src[n.pos]; {
	case c == '{':
		return n.object()
	case c == '[':
		return n.array()
	case c == '"':
		n.pos++
		n.out = append(n.out, '"')
		var err error
		n.out, err = n.str(n.out, false)
		n.out = append(n.out, '"')
		return err
	case c == '-' || isDigit(c):
		return n.number()
	default:
		for _, lit := range [...]string{"true", "false", "null"} {
			if len(n.src)-n.pos >= len(lit) && string(n.src[n.pos:n.pos+len(lit)]) == lit {
				end := n.pos + len(lit)
				if end < len(n.src) && isAlnum(n.src[end]) {
					break
				}
				n.out = append(n.out, lit...)
				n.pos = end
				return nil
			}
		}
		return n.syntax("invalid token")
	}
}

func isAlnum(c byte) bool {
	return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z') || c == '_' || c >= 0x80
}

// skipDigits returns the index of the first byte from i on that is not a
// digit.
func (n *jsonNormalizer) skipDigits(i int) int {
	for i < len(n.src) && isDigit(n.src[i]) {
		i++
	}
	return i
}

func (n *jsonNormalizer) number() error {
	start := n.pos
	i := n.pos
	if n.src[i] == '-' {
		i++
	}
	switch {
	case i < len(n.src) && n.src[i] == '0':
		i++
	case i < len(n.src) && n.src[i] >= '1' && n.src[i] <= '9':
		i = n.skipDigits(i)
	default:
		n.pos = i
		return n.syntax("invalid number")
	}
	requireDigits := func(ds int) error {
		if i = n.skipDigits(ds); i == ds {
			n.pos = i
			return n.syntax("invalid number")
		}
		return nil
	}
	if i < len(n.src) && n.src[i] == '.' {
		if err := requireDigits(i + 1); err != nil {
			return err
		}
	}
	if i < len(n.src) && (n.src[i] == 'e' || n.src[i] == 'E') {
		i++
		if i < len(n.src) && (n.src[i] == '+' || n.src[i] == '-') {
			i++
		}
		if err := requireDigits(i); err != nil {
			return err
		}
	}
	if i < len(n.src) && isAlnum(n.src[i]) {
		n.pos = i
		return n.syntax("invalid number")
	}
	n.pos = i
	var err error
	n.out, err = appendNumeric(n.out, n.src[start:i])
	return err
}

// str decodes the string starting after its opening quote and appends it
// escaped like escape_json (to dst, which is n.out or n.keys); with raw it
// appends the decoded bytes instead.
func (n *jsonNormalizer) str(dst []byte, raw bool) ([]byte, error) {
	s := n.src
	for {
		i := n.pos
		for i < len(s) && plain[s[i]] {
			i++
		}
		dst = append(dst, s[n.pos:i]...)
		n.pos = i
		if i >= len(s) {
			return dst, n.syntax("unterminated string")
		}
		c := s[i]
		if c == '"' {
			n.pos++
			return dst, nil
		}
		if c < 0x20 {
			return dst, n.syntax("control character in string")
		}
		// Backslash escape.
		if i+1 >= len(s) {
			return dst, n.syntax("unterminated string")
		}
		e := s[i+1]
		n.pos = i + 2
		var r rune
		switch e {
		case '"', '\\', '/':
			r = rune(e)
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			var err error
			if r, err = n.unicodeEscape(); err != nil {
				return dst, err
			}
		default:
			return dst, n.syntax("invalid escape")
		}
		switch {
		case raw:
			dst = utf8.AppendRune(dst, r)
		case r < 0x80:
			dst = appendEscapedByte(dst, byte(r))
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
}

// unicodeEscape reads the XXXX of \uXXXX (and a following low surrogate).
func (n *jsonNormalizer) unicodeEscape() (rune, error) {
	r, ok := n.hex4()
	if !ok {
		return 0, n.syntax(`"\u" must be followed by four hexadecimal digits`)
	}
	switch {
	case r == 0:
		return 0, errNulEscape
	case r >= 0xDC00 && r <= 0xDFFF:
		return 0, n.syntax("Unicode low surrogate must follow a high surrogate")
	case r >= 0xD800 && r <= 0xDBFF:
		s := n.src
		if n.pos+1 >= len(s) || s[n.pos] != '\\' || s[n.pos+1] != 'u' {
			return 0, n.syntax("Unicode low surrogate must follow a high surrogate")
		}
		n.pos += 2
		lo, ok := n.hex4()
		if !ok {
			return 0, n.syntax(`"\u" must be followed by four hexadecimal digits`)
		}
		if lo < 0xDC00 || lo > 0xDFFF {
			return 0, n.syntax("Unicode low surrogate must follow a high surrogate")
		}
		return 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00), nil
	}
	return r, nil
}

func (n *jsonNormalizer) hex4() (rune, bool) {
	if n.pos+4 > len(n.src) {
		return 0, false
	}
	var r rune
	for _, c := range n.src[n.pos : n.pos+4] {
		switch {
		case isDigit(c):
			r = r<<4 | rune(c-'0')
		case c|0x20 >= 'a' && c|0x20 <= 'f':
			r = r<<4 | rune(c|0x20-'a'+10)
		default:
			return 0, false
		}
	}
	n.pos += 4
	return r, true
}

// open starts the array or object whose opening byte is at n.pos: it
// counts the nesting depth and copies the opening byte. An empty one
// ("[]", "{}") it closes at once and reports.
func (n *jsonNormalizer) open(opening, closing byte) (empty bool, err error) {
	n.depth++
	if n.depth > maxJSONDepth {
		return false, n.syntax("nesting too deep")
	}
	n.pos++
	n.out = append(n.out, opening)
	n.skipSpace()
	if n.pos < len(n.src) && n.src[n.pos] == closing {
		n.pos++
		n.close(closing)
		return true, nil
	}
	return false, nil
}

// close ends the innermost array or object, whose closing byte has been
// read.
func (n *jsonNormalizer) close(closing byte) {
	n.out = append(n.out, closing)
	n.depth--
}

func (n *jsonNormalizer) array() error {
	if empty, err := n.open('[', ']'); empty || err != nil {
		return err
	}
	for first := true; ; first = false {
		if !first {
			n.out = append(n.out, ',', ' ')
		}
		n.skipSpace()
		if err := n.value(); err != nil {
			return err
		}
		n.skipSpace()
		if n.pos >= len(n.src) {
			return n.syntax("unexpected end of input")
		}
		switch n.src[n.pos] {
		case ',':
			n.pos++
			continue
		case ']':
			n.pos++
			n.close(']')
			return nil
		}
		return n.syntax(`expected "," or "]"`)
	}
}

func (n *jsonNormalizer) object() error {
	if empty, err := n.open('{', '}'); empty || err != nil {
		return err
	}
	base := len(n.members)
	keysBase := len(n.keys)
	objStart := len(n.out) // first member
	for first := true; ; first = false {
		if !first {
			n.out = append(n.out, ',', ' ')
		}
		n.skipSpace()
		if n.pos >= len(n.src) || n.src[n.pos] != '"' {
			return n.syntax("expected a string key")
		}
		n.pos++
		keyOff := len(n.keys)
		var err error
		if n.keys, err = n.str(n.keys, true); err != nil {
			return err
		}
		m := member{keyOff: keyOff, keyLen: len(n.keys) - keyOff, start: len(n.out) - objStart, order: len(n.members) - base}
		n.out = appendString(n.out, n.keys[keyOff:])
		n.out = append(n.out, ':', ' ')
		n.skipSpace()
		if n.pos >= len(n.src) || n.src[n.pos] != ':' {
			return n.syntax(`expected ":"`)
		}
		n.pos++
		n.skipSpace()
		if err := n.value(); err != nil {
			return err
		}
		m.end = len(n.out) - objStart
		n.members = append(n.members, m)
		n.skipSpace()
		if n.pos >= len(n.src) {
			return n.syntax("unexpected end of input")
		}
		if n.src[n.pos] == ',' {
			n.pos++
			continue
		}
		if n.src[n.pos] == '}' {
			n.pos++
			break
		}
		return n.syntax(`expected "," or "}"`)
	}
	n.finishObject(base, objStart)
	n.members = n.members[:base]
	n.keys = n.keys[:keysBase]
	n.close('}')
	return nil
}

// finishObject rewrites the members of the object starting at objStart in
// jsonb order, keeping the last of duplicate keys.
func (n *jsonNormalizer) finishObject(base, objStart int) {
	ms := n.members[base:]
	ordered := true
	for i := 1; i < len(ms); i++ {
		if n.compareKeys(ms[i-1], ms[i]) >= 0 {
			ordered = false
			break
		}
	}
	if ordered {
		return
	}
	// Among equal keys the later member sorts first: it wins.
	if len(ms) <= 12 {
		for i := 1; i < len(ms); i++ {
			for j := i; j > 0 && n.less(&ms[j], &ms[j-1]); j-- {
				ms[j], ms[j-1] = ms[j-1], ms[j]
			}
		}
	} else {
		slices.SortFunc(ms, func(a, b member) int {
			if n.less(&a, &b) {
				return -1
			}
			return 1 // never equal: orders differ
		})
	}
	n.tmp = append(n.tmp[:0], n.out[objStart:]...)
	n.out = n.out[:objStart]
	for i, m := range ms {
		if i > 0 && n.compareKeys(ms[i-1], m) == 0 {
			continue
		}
		if len(n.out) > objStart {
			n.out = append(n.out, ',', ' ')
		}
		n.out = append(n.out, n.tmp[m.start:m.end]...)
	}
}

// compareKeys orders keys as jsonb does: shorter first, then bytewise.
func (n *jsonNormalizer) compareKeys(a, b member) int {
	if a.keyLen != b.keyLen {
		return a.keyLen - b.keyLen
	}
	return bytes.Compare(n.keys[a.keyOff:a.keyOff+a.keyLen], n.keys[b.keyOff:b.keyOff+b.keyLen])
}

// less is the sort order of finishObject: key order, then later first.
func (n *jsonNormalizer) less(a, b *member) bool {
	if a.keyLen != b.keyLen {
		return a.keyLen < b.keyLen
	}
	if c := bytes.Compare(n.keys[a.keyOff:a.keyOff+a.keyLen], n.keys[b.keyOff:b.keyOff+b.keyLen]); c != 0 {
		return c < 0
	}
	return a.order > b.order
}
