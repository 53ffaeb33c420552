package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

// ValueError is a change the agent cannot mirror: its key cannot be built,
// its value cannot be encoded, or it exceeds what the store takes. The
// agent does not pass it: it retries, mirroring nothing after it, until
// an operator tells it to leave the change out (SkipKey, `lenkwerk skip`).
// The schema refuses such rows at the source (migration 8); what still
// gets through is a store with smaller limits, a table added to the
// publication later, or a key template of the operator's.
type ValueError struct {
	Table string
	// Key is the store key; "" when it cannot be built.
	Key string
	// CommitLSN is the commit LSN of the change's transaction; 0 for a
	// row of a table copy.
	CommitLSN pglogrepl.LSN
	// CommitTime is when the transaction committed (zero for a copy).
	CommitTime time.Time
	Err        error
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("table %s, key %s (%s) cannot be mirrored: %v", e.Table, quoteKey(e.Key), e.where(), e.Err)
}

func (e *ValueError) Unwrap() error { return e.Err }

func (e *ValueError) where() string {
	if e.CommitLSN == 0 {
		return "table copy"
	}
	return "commit " + e.CommitLSN.String()
}

// Skip is the instruction that leaves out exactly this change.
func (e *ValueError) Skip() Skip {
	return Skip{Table: e.Table, KeySHA256: KeyHash(e.Key), CommitLSN: e.CommitLSN.String(), Key: ShortKey(e.Key)}
}

// WayOut is the command that skips the change, for the agent of slot
// with key prefix prefix.
func (e *ValueError) WayOut(slot, prefix string) string {
	cmd := "lenkwerk skip --slot " + slot
	if prefix != "" {
		cmd += " --prefix " + prefix
	}
	return fmt.Sprintf("%s --table %s --lsn %s --key-sha256 %s", cmd, e.Table, e.CommitLSN, KeyHash(e.Key))
}

// same reports whether o is the same change.
func (e *ValueError) same(o *ValueError) bool {
	return o != nil && e.Table == o.Table && e.Key == o.Key && e.CommitLSN == o.CommitLSN
}

// KeyHash is the SHA-256 of a store key, in hex: how a Skip names a key
// (which may be longer than a store value may be).
func KeyHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// ShortKey is key for logs: cut to its first 96 bytes, with its length,
// when longer than 128.
func ShortKey(key string) string {
	if key == "" {
		return "(none: it cannot be built)"
	}
	if len(key) <= 128 {
		return key
	}
	cut := 96
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", key[:cut], len(key))
}

// quoteKey is ShortKey for one-line messages: quoted, so a key's control
// characters stay escaped.
func quoteKey(key string) string {
	switch {
	case key == "":
		return ShortKey(key)
	case len(key) <= 128:
		return strconv.Quote(key)
	}
	short := ShortKey(key)
	i := strings.LastIndex(short, "... (")
	return strconv.Quote(short[:i]) + short[i:]
}

// SkipKey is the store key holding slot's skip instructions:
// "<prefix>/.lenkwerk/skip/<slot>". A trailing '/' on prefix changes
// nothing.
func SkipKey(prefix, slot string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + ReservedSegment + "/skip/" + slot
}

// Skip tells the agent to leave out one change it cannot mirror: the
// change of table Table to the key whose SHA-256 is KeySHA256 in the
// transaction that commits at CommitLSN ("0/0": in a table copy). The
// store keeps what it has for the key until the row changes again. Only a
// change the agent cannot mirror is ever skipped: an instruction naming a
// change that can be mirrored has no effect.
type Skip struct {
	Table     string `json:"table"`
	KeySHA256 string `json:"key_sha256"`
	CommitLSN string `json:"commit_lsn"`
	// Key is the key as ShortKey shows it, for people.
	Key string `json:"key,omitempty"`
	// Time is when the instruction was given.
	Time time.Time `json:"time"`
}

type skipList struct {
	Skip []Skip `json:"skip"`
}

func (s Skip) matches(e *ValueError) bool {
	return s.Table == e.Table && s.KeySHA256 == KeyHash(e.Key) && s.CommitLSN == e.CommitLSN.String()
}

// maxSkips bounds a slot's instructions.
const maxSkips = 1000

// AddSkip adds an instruction for the agent of slot (with key prefix
// prefix) to the store, atomically with the instructions already there,
// less those for transactions the store's checkpoint has passed. A
// running agent acts on it at its next attempt.
func AddSkip(ctx context.Context, store *kvdriver.Store, prefix, slot string, s Skip) error {
	if _, err := pglogrepl.ParseLSN(s.CommitLSN); err != nil {
		return fmt.Errorf("skip: commit LSN %q: %w", s.CommitLSN, err)
	}
	if b, err := hex.DecodeString(s.KeySHA256); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("skip: key SHA-256 %q is not 64 hex digits", s.KeySHA256)
	}
	if !strings.Contains(s.Table, ".") {
		return fmt.Errorf("skip: table %q is not schema.table", s.Table)
	}
	if s.Time.IsZero() {
		s.Time = time.Now().UTC()
	}
	key := SkipKey(prefix, slot)
	list, rev, err := readSkips(ctx, store, key)
	if err != nil {
		return err
	}
	ck, ok, err := ReadCheckpoint(ctx, store, prefix, slot)
	if err != nil {
		return fmt.Errorf("skip: %w", err)
	}
	list = slices.DeleteFunc(list, func(o Skip) bool {
		lsn, err := pglogrepl.ParseLSN(o.CommitLSN)
		passed := ok && err == nil && lsn != 0 && ck.LSN > lsn
		return passed || (o.Table == s.Table && o.KeySHA256 == s.KeySHA256 && o.CommitLSN == s.CommitLSN)
	})
	if len(list) >= maxSkips {
		return fmt.Errorf("skip: slot %s has %d instructions already (the most is %d): fix the rows at the source", slot, len(list), maxSkips)
	}
	v, err := json.Marshal(skipList{append(list, s)})
	if err != nil {
		return err
	}
	if _, err := store.Apply(ctx, []kvdriver.Op{kvdriver.Require(key, rev), kvdriver.Put(key, v)}); err != nil {
		if errors.Is(err, kvdriver.ErrConflict) {
			return fmt.Errorf("skip: %s changed meanwhile (another lenkwerk skip?): try again: %w", key, err)
		}
		return fmt.Errorf("skip: write %s: %w", key, err)
	}
	return nil
}

// readSkips returns the instructions under key and the key's revision
// (0: none).
func readSkips(ctx context.Context, store *kvdriver.Store, key string) ([]Skip, int64, error) {
	kv, err := store.Get(ctx, key)
	if errors.Is(err, kvdriver.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read skip instructions %s: %w", key, err)
	}
	var l skipList
	if err := json.Unmarshal(kv.Value, &l); err != nil {
		return nil, 0, fmt.Errorf("skip instructions %s: %w", key, err)
	}
	return l.Skip, kv.ModRevision, nil
}

// newValueError is the *ValueError of a change of table that cannot be
// mirrored (err itself when it is one); lsn is its transaction's commit
// LSN (0 in a table copy), at is the transaction's commit time.
func newValueError(table, key string, lsn pglogrepl.LSN, at time.Time, err error) *ValueError {
	var ve *ValueError
	if errors.As(err, &ve) {
		return ve
	}
	ve = &ValueError{Table: table, Key: key, CommitLSN: lsn, Err: err}
	if lsn != 0 {
		ve.CommitTime = at
	}
	return ve
}

// rowError handles a change that cannot be mirrored: it returns the
// change's *ValueError, or nil when an operator told the agent to skip
// exactly this change (logged loudly; the caller leaves it out).
func (s *session) rowError(ctx context.Context, table, key string, lsn pglogrepl.LSN, err error) error {
	ve := newValueError(table, key, lsn, s.dec.txnTime, err)
	if s.skipped(ctx, ve) {
		return nil
	}
	return ve
}

// skipped reports whether an operator told the agent to skip exactly the
// change ve (logged loudly). The instructions are read from the store at
// the session's first change that cannot be mirrored.
func (s *session) skipped(ctx context.Context, ve *ValueError) bool {
	if s.skips == nil {
		rctx, cancel := context.WithTimeout(ctx, s.a.cfg.ApplyTimeout)
		list, _, rerr := readSkips(rctx, s.a.cfg.Store, SkipKey(s.a.cfg.Prefix, s.a.cfg.Slot))
		cancel()
		if rerr != nil {
			// Blocked either way; the store error is the next session's.
			s.a.log.Warn("cannot read skip instructions", "err", rerr)
			return false
		}
		s.skips = list
		if s.skips == nil {
			s.skips = []Skip{}
		}
	}
	for _, sk := range s.skips {
		if sk.matches(ve) {
			s.a.met.skipped.Inc()
			s.a.log.Warn("skipping a change that cannot be mirrored, as `lenkwerk skip` instructed: the store keeps what it has for the key until the row changes again",
				"table", ve.Table, "key", ShortKey(ve.Key), "commit_lsn", ve.CommitLSN, "instructed", sk.Time, "err", ve.Err)
			return true
		}
	}
	return false
}
