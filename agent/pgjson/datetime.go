package pgjson

// appendTimestamp appends timestamp[tz] output in DateStyle ISO
// ("2024-01-02 03:04:05.5+00", "0044-03-15 12:00:00+00 BC", "infinity")
// as the JSON string to_jsonb writes (JsonEncodeDateTime, XSD style):
// a 'T' between date and time, and the zone offset always with minutes
// ("+00:00"; an offset with seconds keeps them, as in ISO).
func appendTimestamp(dst, s []byte, withZone bool) []byte {
	if len(s) == 0 || !isDigit(s[0]) {
		return appendString(dst, s) // infinity, -infinity
	}
	sp := -1
	for i, c := range s {
		if c == ' ' {
			sp = i
			break
		}
	}
	if sp < 0 {
		return appendString(dst, s)
	}
	dst = append(dst, '"')
	dst = append(dst, s[:sp]...)
	dst = append(dst, 'T')
	rest := s[sp+1:]
	if !withZone {
		dst = append(dst, rest...)
		return append(dst, '"')
	}
	z := -1
	for i, c := range rest {
		if c == '+' || c == '-' {
			z = i
			break
		}
	}
	if z < 0 {
		dst = append(dst, rest...)
		return append(dst, '"')
	}
	end := z
	for end < len(rest) && rest[end] != ' ' {
		end++
	}
	dst = append(dst, rest[:end]...)
	if end-z == 3 { // "+HH": XSD style always writes minutes
		dst = append(dst, ':', '0', '0')
	}
	dst = append(dst, rest[end:]...)
	return append(dst, '"')
}
