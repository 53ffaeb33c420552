package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
)

// WaitForKey waits until ok(value, exists) holds for key in the store:
// exists is false (and value nil) while the key is absent. It looks at the
// current value first, then watches, so it sees every value the key takes.
// It returns nil once ok holds, or ctx's error (with the last value seen,
// and the last store error, if any) when ctx ends first. Store outages and
// restarts are ridden out.
func (s *Stack) WaitForKey(ctx context.Context, key string, ok func(value []byte, exists bool) bool) error {
	var last []byte
	var lastExists bool
	var lastErr error
	for {
		done, err := s.waitForKeyOnce(ctx, key, ok, &last, &lastExists)
		if done {
			return nil
		}
		// The error of a wait that ctx ended says nothing new; one from
		// before (a store down) says why the key never came.
		if err != nil && ctx.Err() == nil {
			lastErr = err
		}
		if ctx.Err() != nil {
			state := "absent"
			if lastExists {
				state = fmt.Sprintf("%.200s", last)
			}
			storeErr := ""
			if lastErr != nil {
				storeErr = fmt.Sprintf(", last store error: %s", redactError(lastErr))
			}
			return fmt.Errorf("harness: waiting for key %s (last: %s%s): %w", key, state, storeErr, ctx.Err())
		}
		// A store restarting or a compacted watch: list again.
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitForKeyOnce lists key, then watches it from the listing's revision
// until ok holds, the watch ends or ctx ends.
func (s *Stack) waitForKeyOnce(ctx context.Context, key string, ok func([]byte, bool) bool, last *[]byte, lastExists *bool) (bool, error) {
	store := s.Store()
	kvs, rev, err := store.List(ctx, key)
	if err != nil {
		return false, err
	}
	*last, *lastExists = nil, false
	for _, kv := range kvs {
		if kv.Key == key {
			*last, *lastExists = kv.Value, true
		}
	}
	if ok(*last, *lastExists) {
		return true, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range store.Watch(wctx, key, rev) {
		if resp.Err != nil {
			return false, resp.Err
		}
		for _, ev := range resp.Events {
			if ev.Key != key {
				continue
			}
			if ev.Type == kvdriver.OpDelete {
				*last, *lastExists = nil, false
			} else {
				*last, *lastExists = ev.Value, true
			}
			if ok(*last, *lastExists) {
				return true, nil
			}
		}
	}
	return false, errors.New("watch ended")
}

// redactError is err's message for an error message of the harness: URLs
// in it with their passwords masked, at most 300 bytes.
func redactError(err error) string {
	words := strings.Fields(err.Error())
	for i, w := range words {
		if j := strings.Index(w, "://"); j >= 0 {
			// The URL begins at its scheme, after any quote or bracket.
			k := strings.LastIndexFunc(w[:j], func(r rune) bool { return !isSchemeRune(r) }) + 1
			words[i] = w[:k] + kvdriver.Redact(strings.TrimRight(w[k:], `"'),;]>`)) + w[len(strings.TrimRight(w, `"'),;]>`)):]
		}
	}
	msg := strings.Join(words, " ")
	if len(msg) > 300 {
		msg = strings.ToValidUTF8(msg[:300], "") + "…"
	}
	return msg
}

// isSchemeRune reports whether r may be part of a URL scheme.
func isSchemeRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'
}

// Equals is a WaitForKey predicate: the key exists with exactly value.
func Equals(value []byte) func([]byte, bool) bool {
	return func(v []byte, exists bool) bool { return exists && bytes.Equal(v, value) }
}

// Exists is a WaitForKey predicate: the key exists.
func Exists(_ []byte, exists bool) bool { return exists }

// Absent is a WaitForKey predicate: the key does not exist.
func Absent(_ []byte, exists bool) bool { return !exists }

// WaitCaughtUp waits until the store reflects every transaction committed
// in the Lenkwerk database before the call. It takes the server's WAL insert
// position at the call and waits until the agent's checkpoint in the store
// (written in the same batch as the data it covers) reaches it. An idle
// agent moves its checkpoint past WAL that holds no published change only
// every few seconds, so it also returns as soon as the store mirrors the
// database exactly (integration/converge) — which, should a change have
// been undone before the agent applied it, does not mean that the agent
// will not show the intermediate values later.
//
// It returns ctx's error when ctx ends first (with where the agent is).
func (s *Stack) WaitCaughtUp(ctx context.Context) error {
	target, err := s.insertLSN(ctx)
	if err != nil {
		return err
	}
	opts := converge.Options{Prefix: s.cfg.prefix, Templates: s.cfg.templates}
	var (
		ck        agent.Checkpoint
		lastCheck time.Time
		lastErr   error
	)
	err = poll(ctx, 50*time.Millisecond, func() (bool, error) {
		store := s.Store()
		c, ok, err := agent.ReadCheckpoint(ctx, store, s.cfg.prefix, agent.DefaultSlot)
		if err != nil {
			lastErr = err
			return false, nil // the store may be restarting
		}
		if ok {
			ck = c
			if c.LSN >= target {
				return true, nil
			}
		}
		if time.Since(lastCheck) < 500*time.Millisecond {
			return false, nil
		}
		lastCheck = time.Now()
		d, err := converge.Check(ctx, converge.URL(s.DatabaseURL()), store, opts)
		if err != nil {
			lastErr = err
			return false, nil
		}
		return d.Equal(), nil
	})
	if err != nil {
		return fmt.Errorf("harness: waiting for the store to reach %s (agent checkpoint %s, last error %v): %w", target, ck.LSN, lastErr, err)
	}
	return nil
}

// insertLSN returns pg_current_wal_insert_lsn(): every transaction
// committed so far ends at or before it. Not the flush position: with
// synchronous_commit off (as test servers run) a commit returns before its
// record is flushed.
func (s *Stack) insertLSN(ctx context.Context) (pglogrepl.LSN, error) {
	var lsn pglogrepl.LSN
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		conn, err := pgx.Connect(ctx, s.DatabaseURL())
		if err != nil {
			return false, nil // PostgreSQL may be restarting
		}
		defer conn.Close(context.Background())
		var text string
		if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&text); err != nil {
			return false, nil
		}
		lsn, err = pglogrepl.ParseLSN(text)
		return err == nil, err
	})
	if err != nil {
		return 0, fmt.Errorf("harness: read the WAL insert position: %w", err)
	}
	return lsn, nil
}
