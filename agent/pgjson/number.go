package pgjson

import (
	"errors"
	"fmt"
)

// Limits of PostgreSQL's numeric type (numeric.c): a value may have at most
// 131072 digits before the decimal point and 16383 after it.
const (
	numericMaxIntDigits = 131072
	numericMaxDscale    = 16383
)

var errNumericOverflow = errors.New("value overflows numeric format")

// appendNumeric appends the number s (JSON number syntax, which includes
// float8out's and float4out's output) as numeric_out(numeric_in(s)) writes
// it: plain decimal notation, no exponent, no negative zero, and as many
// fractional digits as s has after the point minus its exponent (so "1.50"
// stays "1.50", "1.5e-7" becomes "0.00000015" and "1e+2" becomes "100").
// This is how to_jsonb turns float and json numbers into jsonb numerics.
func appendNumeric(dst, s []byte) ([]byte, error) {
	i := 0
	neg := false
	if i < len(s) && s[i] == '-' {
		neg = true
		i++
	}
	intStart := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intPart := s[intStart:i]
	var frac []byte
	if i < len(s) && s[i] == '.' {
		i++
		fs := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		frac = s[fs:i]
	}
	if len(intPart) == 0 && len(frac) == 0 {
		return dst, fmt.Errorf("invalid number %q", s)
	}
	exp := 0
	hasExp := false
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		hasExp = true
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		es := i
		for i < len(s) && isDigit(s[i]) {
			if exp < 1<<30 {
				exp = exp*10 + int(s[i]-'0')
			}
			i++
		}
		if i == es {
			return dst, fmt.Errorf("invalid number %q", s)
		}
		if eneg {
			exp = -exp
		}
	}
	if i != len(s) {
		return dst, fmt.Errorf("invalid number %q", s)
	}
	// Fast path: already canonical (the common case for integers and
	// decimals without exponent and without redundant leading zeros).
	if !hasExp && !neg && (len(intPart) == 1 || (len(intPart) > 1 && intPart[0] != '0')) && len(frac) <= numericMaxDscale && len(intPart) <= numericMaxIntDigits {
		return append(dst, s...), nil
	}
	if exp >= 1<<30 || exp <= -(1<<30) {
		return dst, errNumericOverflow
	}

	// The digits of intPart||frac, with the decimal point after point digits.
	nd := len(intPart) + len(frac)
	digit := func(k int) byte {
		switch {
		case k < 0 || k >= nd:
			return '0'
		case k < len(intPart):
			return intPart[k]
		default:
			return frac[k-len(intPart)]
		}
	}
	point := len(intPart) + exp
	dscale := len(frac) - exp
	if dscale < 0 {
		dscale = 0
	}
	// First non-zero digit; a zero value has no sign in numeric.
	first := -1
	for k := 0; k < nd; k++ {
		if digit(k) != '0' {
			first = k
			break
		}
	}
	if dscale > numericMaxDscale {
		return dst, errNumericOverflow
	}
	if first < 0 {
		dst = append(dst, '0')
	} else {
		if first < point && point-first > numericMaxIntDigits {
			return dst, errNumericOverflow
		}
		if neg {
			dst = append(dst, '-')
		}
		if first >= point {
			dst = append(dst, '0')
		} else {
			for k := first; k < point; k++ {
				dst = append(dst, digit(k))
			}
		}
	}
	if dscale > 0 {
		dst = append(dst, '.')
		for k := point; k < point+dscale; k++ {
			dst = append(dst, digit(k))
		}
	}
	return dst, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
