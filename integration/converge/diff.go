package converge

import (
	"fmt"
	"strings"
)

// DefaultReportLimit is how many keys of each kind Diff.String shows.
const DefaultReportLimit = 10

// maxShownValue bounds each value Diff.String shows.
const maxShownValue = 300

// Entry is a key and its value.
type Entry struct {
	Key   string
	Value []byte
}

// Mismatch is a key whose store value differs from its row's to_jsonb.
type Mismatch struct {
	Key  string
	Want []byte // to_jsonb of the row
	Got  []byte // the store's value
}

// Diff is what separates the store from the database. Every list is sorted
// by key and complete; String shows a bounded part of it.
type Diff struct {
	// Missing: rows whose key is absent from the store.
	Missing []Entry
	// Unexpected: store keys that match no row (the value is the store's).
	Unexpected []Entry
	// Different: keys whose value is not the row's to_jsonb.
	Different []Mismatch
	// Expected and Actual count the keys of the database and of the store.
	Expected, Actual int
	// Revision is the store revision of the listing.
	Revision int64
}

// Equal reports whether the store mirrors the database exactly.
func (d Diff) Equal() bool {
	return len(d.Missing) == 0 && len(d.Unexpected) == 0 && len(d.Different) == 0
}

// String describes the difference, at most DefaultReportLimit keys of each
// kind, values shortened.
func (d Diff) String() string { return d.Format(DefaultReportLimit) }

// Format is String with at most limit keys of each kind.
func (d Diff) Format(limit int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d keys expected from the database, %d in the store (revision %d)", d.Expected, d.Actual, d.Revision)
	if d.Equal() {
		b.WriteString(": equal")
		return b.String()
	}
	fmt.Fprintf(&b, ": %d missing, %d unexpected, %d different", len(d.Missing), len(d.Unexpected), len(d.Different))
	section := func(title string, n int, line func(i int)) {
		if n == 0 {
			return
		}
		fmt.Fprintf(&b, "\n%s:", title)
		for i := 0; i < n && i < limit; i++ {
			line(i)
		}
		if n > limit {
			fmt.Fprintf(&b, "\n  … and %d more", n-limit)
		}
	}
	section("missing (in the database, not in the store)", len(d.Missing), func(i int) {
		fmt.Fprintf(&b, "\n  %s\n    want %s", d.Missing[i].Key, shorten(d.Missing[i].Value))
	})
	section("unexpected (in the store, no such row)", len(d.Unexpected), func(i int) {
		fmt.Fprintf(&b, "\n  %s\n    got  %s", d.Unexpected[i].Key, shorten(d.Unexpected[i].Value))
	})
	section("different", len(d.Different), func(i int) {
		m := d.Different[i]
		fmt.Fprintf(&b, "\n  %s\n    want %s\n    got  %s", m.Key, shorten(m.Want), shorten(m.Got))
	})
	return b.String()
}

func shorten(v []byte) string {
	if len(v) <= maxShownValue {
		return string(v)
	}
	return fmt.Sprintf("%s… (%d bytes)", v[:maxShownValue], len(v))
}
