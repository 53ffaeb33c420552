package status

import (
	"fmt"
	"strconv"
	"strings"
)

// units are the suffixes ParseBytes accepts. As in postgresql.conf, kB, MB,
// GB and TB are powers of 1024 too, so "1GB" and "1GiB" agree with
// max_slot_wal_keep_size.
var units = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1 << 10}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
	{"B", 1},
}

// ParseBytes parses a size: a byte count ("1048576") or a whole number with
// a unit ("512MB", "1GiB", "64kB"; units are powers of 1024).
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.n
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with kB, MB, GB, TB (or KiB, MiB, GiB, TiB)", s)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}

// Bytes formats n for people: "512 B", "1.5 MiB", "3.0 GiB".
type Bytes int64

func (n Bytes) String() string {
	v := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", int64(n))
			}
			return fmt.Sprintf("%.1f %s", v, u)
		}
		v /= 1024
	}
	return "" // unreachable
}
