package converge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
)

// DefaultPublication is the publication the agent streams by default.
const DefaultPublication = "bagger_lw_storage"

// ReservedSegment is the first segment, under the agent's prefix, of the
// keys the agent keeps for itself (checkpoints); Check ignores them.
const ReservedSegment = ".lenkwerk"

// ErrNotConverged is returned by Wait when the store still differs from the
// database at the timeout.
var ErrNotConverged = errors.New("converge: store does not mirror the database")

// Options say what the agent was told, so Check expects the same keys.
type Options struct {
	// Publication names the published tables; default DefaultPublication.
	Publication string
	// Prefix is the agent's --prefix ("" or "/a/b"): every key is under it.
	Prefix string
	// Templates override or extend the default key templates
	// ("schema.table" → "/Key/{col}"), as the agent's own.
	Templates map[string]string
}

// Check compares the store with the database once. The database is read in
// one repeatable-read, read-only transaction with TimeZone=UTC; the store is
// listed afterwards. A non-nil error means the comparison could not be made
// (connection, query, or a row that yields no valid key); differences are in
// the Diff.
func Check(ctx context.Context, db DB, store *kvdriver.Store, opts Options) (Diff, error) {
	prefix, err := keymap.CleanPrefix(opts.Prefix)
	if err != nil {
		return Diff{}, err
	}
	opts.Prefix = prefix
	mapper, err := keymap.New(opts.Prefix, opts.Templates)
	if err != nil {
		return Diff{}, fmt.Errorf("converge: key templates: %w", err)
	}
	pub := opts.Publication
	if pub == "" {
		pub = DefaultPublication
	}
	want, err := expected(ctx, db, mapper, pub)
	if err != nil {
		return Diff{}, err
	}
	got, rev, err := actual(ctx, store, opts.Prefix)
	if err != nil {
		return Diff{}, err
	}
	d := compare(want, got)
	d.Revision = rev
	return d, nil
}

// Wait calls Check until the store equals the database, ctx ends or timeout
// passes. It returns the last Diff; the error wraps ErrNotConverged (and
// describes the Diff) when they still differ, or is the last Check error when
// no comparison succeeded near the end. Transient errors (a store or
// database restarting) are retried.
func Wait(ctx context.Context, db DB, store *kvdriver.Store, opts Options, timeout time.Duration) (Diff, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pause := 50 * time.Millisecond
	var (
		last    Diff
		checked bool
		lastErr error
	)
	for {
		d, err := Check(ctx, db, store, opts)
		switch {
		case err == nil && d.Equal():
			return d, nil
		case err == nil:
			last, checked, lastErr = d, true, nil
		case ctx.Err() == nil:
			lastErr = err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			if !checked {
				if lastErr == nil {
					lastErr = ctx.Err()
				}
				return Diff{}, fmt.Errorf("converge: no check succeeded within %v: %w", timeout, lastErr)
			}
			if lastErr != nil {
				return last, fmt.Errorf("%w after %v (the last check failed: %v); last difference:\n%s", ErrNotConverged, timeout, lastErr, last)
			}
			return last, fmt.Errorf("%w after %v:\n%s", ErrNotConverged, timeout, last)
		case <-t.C:
		}
		if pause < time.Second {
			pause += pause / 2
		}
	}
}

// compare builds the Diff of want (from the database) and got (the store).
func compare(want, got map[string][]byte) Diff {
	d := Diff{Expected: len(want), Actual: len(got)}
	for _, k := range sortedKeys(want) {
		g, ok := got[k]
		switch {
		case !ok:
			d.Missing = append(d.Missing, Entry{Key: k, Value: want[k]})
		case !bytes.Equal(g, want[k]):
			d.Different = append(d.Different, Mismatch{Key: k, Want: want[k], Got: g})
		}
	}
	for _, k := range sortedKeys(got) {
		if _, ok := want[k]; !ok {
			d.Unexpected = append(d.Unexpected, Entry{Key: k, Value: got[k]})
		}
	}
	return d
}

func sortedKeys(m map[string][]byte) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// actual lists the store under prefix, without the agent's reserved keys.
func actual(ctx context.Context, store *kvdriver.Store, prefix string) (map[string][]byte, int64, error) {
	list := prefix
	if list == "" {
		list = "/"
	}
	kvs, rev, err := store.List(ctx, list)
	if err != nil {
		return nil, 0, fmt.Errorf("converge: list store under %q: %w", list, err)
	}
	reserved := prefix + "/" + ReservedSegment
	got := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		if kvdriver.InPrefix(kv.Key, reserved) {
			continue
		}
		got[kv.Key] = kv.Value
	}
	return got, rev, nil
}

// rowKey computes the key of one row given as to_jsonb text.
func rowKey(tmpl *keymap.Template, value []byte) (string, error) {
	var row map[string]json.RawMessage
	if err := json.Unmarshal(value, &row); err != nil {
		return "", fmt.Errorf("decode to_jsonb: %w", err)
	}
	return tmpl.Key(row)
}
