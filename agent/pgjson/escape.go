package pgjson

const hexDigits = "0123456789abcdef"

// plain marks the bytes escape_json copies unchanged.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString appends s as a JSON string exactly as PostgreSQL's escape_json
// writes it: only '"', '\\' and control characters are escaped, the named
// ones by name and the rest as lower-case \u00XX; everything else (including
// DEL and non-ASCII) is copied.
func appendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	dst = appendEscaped(dst, s)
	return append(dst, '"')
}

func appendEscaped(dst, s []byte) []byte {
	for len(s) > 0 {
		i := 0
		for i < len(s) && plain[s[i]] {
			i++
		}
		dst = append(dst, s[:i]...)
		if i == len(s) {
			break
		}
		dst = appendEscapedByte(dst, s[i])
		s = s[i+1:]
	}
	return dst
}

// named are the escapes escape_json writes by name: '"' as \", '\n' as \n
// and so on (0: none).
var named = [256]byte{'"': '"', '\\': '\\', '\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r', '\t': 't'}

func appendEscapedByte(dst []byte, c byte) []byte {
	if e := named[c]; e != 0 {
		return append(dst, '\\', e)
	}
	if c < 0x20 {
		return append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
	}
	return append(dst, c)
}
