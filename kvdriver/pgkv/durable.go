package pgkv

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Durability. kv_apply commits asynchronously when other writers wait for
// the revision lock (migration 4): the lock is released once the commit
// record is written, before the WAL flush, so writers of separate stores no
// longer queue for one fsync each and their flushes group. A writer alone
// commits synchronously, as before. Two rules keep what a watcher has seen
// from vanishing in a crash (an asynchronous commit that is lost frees its
// revision number for another change):
//
//   - A write is durable before Apply returns: kv_sync runs after an
//     asynchronous kv_apply (the same statement says which), and its
//     commit flushes past kv_apply's.
//   - A reader returns nothing that is not durable: each read also takes the
//     WAL insert position after its snapshot (walPos) and, unless the WAL is
//     flushed that far, waits until it is (awaitDurable). The position is
//     fixed, so continuous writes cannot starve the reader.
//
// A synchronous kv_apply, or else kv_sync, notifies "<rev> <tag>" after
// the flush: revision rev is durable, and so is everything before it. A
// reader whose revisions are all at or below the highest such revision the
// store heard of needs no wait. The tag (syncTag, from kv_meta.sync_token)
// keeps other roles' NOTIFYs from vouching: any session may LISTEN, so the
// token itself is never sent.

const (
	// durablePollMin and durablePollMax bound the interval between checks
	// of the flush position.
	durablePollMin = 200 * time.Microsecond
	durablePollMax = 5 * time.Millisecond
	// durableForceAfter: a reader that has waited this long calls kv_sync
	// itself. Writers flush right after their commit, so this is rare: a
	// writer that died between commit and flush (the WAL writer would flush
	// it within wal_writer_delay), or WAL nobody flushes soon (another
	// session's transaction still in progress).
	durableForceAfter = 50 * time.Millisecond
)

// noteDurable records that every revision up to rev is durable.
func (s *Driver) noteDurable(rev int64) {
	for {
		cur := s.durable.Load()
		if rev <= cur || s.durable.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// syncNotification parses a durability notification, "<rev> <tag>": the
// durable revision if tag is syncTag(rev, the store's token).
func (s *Driver) syncNotification(payload string) (int64, bool) {
	revText, tag, ok := strings.Cut(payload, " ")
	if !ok || s.syncToken == "" {
		return 0, false
	}
	rev, err := strconv.ParseInt(revText, 10, 64)
	if err != nil || revText != strconv.FormatInt(rev, 10) {
		return 0, false
	}
	want := syncTag(rev, s.syncToken)
	if subtle.ConstantTimeCompare([]byte(tag), []byte(want)) != 1 {
		return 0, false
	}
	return rev, true
}

// syncTag is what kv_apply and kv_sync send with a durable revision:
// hex(sha256("<rev> <token>")). Any session may LISTEN, so the token
// itself is never sent; a tag seen for one revision vouches for no other.
func syncTag(rev int64, token string) string {
	sum := sha256.Sum256([]byte(strconv.FormatInt(rev, 10) + " " + token))
	return hex.EncodeToString(sum[:])
}

// awaitDurable returns once what a read saw is durable: at once if its
// statement found the WAL flushed up to lsn (or ran on a standby), or if
// every revision it read (up to head) is known durable; otherwise when the
// flush position reaches lsn, or after kv_sync forced it there.
func (s *Driver) awaitDurable(ctx context.Context, head int64, lsn *string, flushed bool) error {
	if flushed || lsn == nil || head <= s.durable.Load() {
		return nil
	}
	start := time.Now()
	wait := durablePollMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if head <= s.durable.Load() {
			return nil
		}
		if time.Since(start) >= durableForceAfter {
			// kv_sync's commit record comes after lsn; it returns once
			// flushed (any role may call it; it writes a message only).
			var rev int64
			if err := s.pool.QueryRow(ctx, s.q.sync, nil).Scan(&rev); err != nil {
				return fmt.Errorf("pgkv: wait for WAL flush: %w", s.translate(err))
			}
			s.noteDurable(rev)
			return nil
		}
		var ok bool
		if err := s.pool.QueryRow(ctx, s.q.flushed, *lsn).Scan(&ok); err != nil {
			return fmt.Errorf("pgkv: wait for WAL flush: %w", s.translate(err))
		}
		if ok {
			s.noteDurable(head)
			return nil
		}
		wait = min(2*wait, durablePollMax)
	}
}
