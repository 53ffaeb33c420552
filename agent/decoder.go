package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/jackc/pglogrepl"
)

// relError is a relation that cannot be mirrored: the error is raised
// when one of its changes must be applied.
type relError struct {
	table string
	err   error
}

// decoder turns pgoutput messages into store operations: it knows the
// relations the stream described, the transaction being received, and
// holds that transaction's changes coalesced per key (buf). It holds no
// connection and does no I/O of its own. What needs the server or the
// store stays with the session, which feeds the decoder and acts on what
// it reports:
//   - a Relation message: the session reads the table's catalog entry and
//     loads its types, then hands them to relation, which reports whether
//     the columns changed (the table is then copied again);
//   - mirrored (nil: every table is) says whether the agent mirrors a
//     table; the changes of one it does not are left out and the table
//     is recorded in admitting, and at the transaction's commit the
//     session polls the publication and copies the tables added to it;
//   - skip (nil: none) reports whether an operator said to leave out a
//     change that cannot be mirrored;
//   - truncate reports the relation whose stored keys the session lists
//     and passes to truncateKey;
//   - full reports that buf reached the batch limits (the session takes
//     a chunk);
//   - at commit, buf.newest lists the single-key tables whose newest row
//     the session reads from the database.
type decoder struct {
	mapper *keymap.Mapper
	types  *pgjson.TypeMap // built-in types and those the session loaded
	prefix string          // the agent's key prefix (its reserved keys are never a table's)
	lim    batchLimits

	rels    map[uint32]*relation
	relErrs map[uint32]relError // relations that cannot be mirrored
	// copiedAt are tables copied while streaming → the copy's consistent
	// point: their changes in transactions committed before it are in
	// the copy.
	copiedAt map[string]pglogrepl.LSN

	// The transaction being received.
	inTxn    bool
	skipTxn  bool // already in the store (before the checkpoint)
	finalLSN pglogrepl.LSN
	xid      uint32
	txnTime  time.Time // commit time
	rows     int       // changes decoded
	buf      *txnBuffer
	// admitting are the tables not mirrored (yet) whose changes the
	// transaction left out: the session decides at its commit.
	admitting map[string]bool

	mirrored func(table string) bool
	skip     func(ctx context.Context, ve *ValueError) bool
}

func newDecoder(m *keymap.Mapper, types *pgjson.TypeMap, prefix string, lim batchLimits) *decoder {
	return &decoder{
		mapper:    m,
		types:     types,
		prefix:    prefix,
		lim:       lim,
		rels:      map[uint32]*relation{},
		relErrs:   map[uint32]relError{},
		copiedAt:  map[string]pglogrepl.LSN{},
		buf:       newTxnBuffer(),
		admitting: map[string]bool{},
	}
}

// relation caches a relation's new shape; info is the table's catalog
// entry (empty when the table is gone from the catalog), prepErr what kept
// the session from preparing it (its types, a generated column). A
// relation that cannot be mirrored is remembered as an error, raised only
// when one of its changes must be applied. reshaped reports that the
// columns of a relation already known changed: to_jsonb of every row did,
// so the session polls (and copies the table again) at the next
// transaction boundary.
func (d *decoder) relation(m *pglogrepl.RelationMessage, info tableInfo, prepErr error) (reshaped bool) {
	name := m.Namespace + "." + m.RelationName
	cols := pgjson.ColumnsOf(m)
	if old := d.rels[m.RelationID]; old != nil && !slices.Equal(old.cols, cols) {
		reshaped = true
	}
	delete(d.rels, m.RelationID)
	delete(d.relErrs, m.RelationID)
	if prepErr != nil {
		d.relErrs[m.RelationID] = relError{name, prepErr}
		return reshaped
	}
	enc, err := d.types.NewEncoder(cols)
	if err != nil {
		d.relErrs[m.RelationID] = relError{name, fmt.Errorf("table %s: %w", name, err)}
		return reshaped
	}
	r, err := newRelation(d.mapper, m, info, enc)
	if err != nil {
		d.relErrs[m.RelationID] = relError{name, err}
		return reshaped
	}
	d.rels[m.RelationID] = r
	return reshaped
}

// begin starts a transaction. Dedupe is per transaction, never per row
// (rows of one statement can share an LSN): a transaction whose commit
// record starts before the checkpoint ck ends at or before it, so the
// store has it. (The pipeline may hold newer transactions than ck: those
// end before this one begins, so the comparison is the same.)
func (d *decoder) begin(m *pglogrepl.BeginMessage, ck pglogrepl.LSN) error {
	if d.inTxn {
		return fmt.Errorf("replication stream: BEGIN of xid %d inside xid %d", m.Xid, d.xid)
	}
	d.inTxn, d.finalLSN, d.xid, d.rows, d.txnTime = true, m.FinalLSN, m.Xid, 0, m.CommitTime
	d.skipTxn = m.FinalLSN < ck
	d.buf.reset()
	clear(d.admitting)
	return nil
}

// commit checks that a transaction is open and describes it; nil when the
// store has it already (skipped). The session resolves buf.newest, writes
// buf's operations with the checkpoint, then calls end.
func (d *decoder) commit(m *pglogrepl.CommitMessage) (*commitInfo, error) {
	if !d.inTxn {
		return nil, fmt.Errorf("replication stream: COMMIT %s without BEGIN", m.CommitLSN)
	}
	if d.skipTxn {
		return nil, nil
	}
	return &commitInfo{xid: d.xid, commitLSN: m.CommitLSN, endLSN: m.TransactionEndLSN, time: m.CommitTime, rows: d.rows}, nil
}

// end closes the transaction and forgets what is left of it.
func (d *decoder) end() {
	d.inTxn = false
	d.buf.reset()
	clear(d.admitting)
}

// full reports whether buf reached the batch limits.
func (d *decoder) full() bool {
	return len(d.buf.ops) >= d.lim.ops || d.buf.bytes >= d.lim.bytes
}

// change decodes an Insert, Update or Delete message into buf.
func (d *decoder) change(ctx context.Context, m pglogrepl.Message) error {
	var id uint32
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		id = m.RelationID
	case *pglogrepl.UpdateMessage:
		id = m.RelationID
	case *pglogrepl.DeleteMessage:
		id = m.RelationID
	default:
		return fmt.Errorf("replication stream: %T is not a row change", m)
	}
	r, skip, err := d.relFor(ctx, id)
	if err != nil || skip {
		return err
	}
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		return d.insert(ctx, r, m)
	case *pglogrepl.UpdateMessage:
		return d.update(ctx, r, m)
	default:
		return d.delete(ctx, r, m.(*pglogrepl.DeleteMessage))
	}
}

// relFor returns the relation of a change; skip is true when the change is
// already in the store (its transaction is, or the table was copied from
// a snapshot taken after this transaction committed), when the table is
// not mirrored (recorded in admitting: if it was added to the publication,
// the copy the session takes at the commit holds the change), or when the
// change cannot be mirrored and skip says to leave it out.
func (d *decoder) relFor(ctx context.Context, id uint32) (r *relation, skip bool, err error) {
	if d.skipTxn {
		return nil, true, nil
	}
	r = d.rels[id]
	bad, isBad := d.relErrs[id]
	if r == nil && !isBad {
		return nil, false, fmt.Errorf("replication stream: change for relation %d without a Relation message", id)
	}
	name := bad.table
	if r != nil {
		name = r.qualified
	}
	if d.mirrored != nil && !d.mirrored(name) {
		d.admitting[name] = true
		return nil, true, nil
	}
	if isBad {
		if err := d.fail(ctx, name, "", bad.err); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	if c, ok := d.copiedAt[r.qualified]; ok && d.finalLSN < c {
		return r, true, nil
	}
	d.rows++
	return r, false, nil
}

// fail returns the *ValueError of a change of table that cannot be
// mirrored, or nil when skip says to leave it out (the caller then does).
func (d *decoder) fail(ctx context.Context, table, key string, err error) error {
	ve := newValueError(table, key, d.finalLSN, d.txnTime, err)
	if d.skip != nil && d.skip(ctx, ve) {
		return nil
	}
	return ve
}

func (d *decoder) insert(ctx context.Context, r *relation, m *pglogrepl.InsertMessage) error {
	if r.tmpl.Singleton() {
		d.buf.markNewest(r)
		return nil
	}
	vals, err := r.values(m.Tuple, nil)
	if err != nil {
		return err
	}
	return d.putRow(ctx, r, vals)
}

func (d *decoder) update(ctx context.Context, r *relation, m *pglogrepl.UpdateMessage) error {
	if r.tmpl.Singleton() {
		d.buf.markNewest(r)
		return nil
	}
	vals, err := r.values(m.NewTuple, m.OldTuple)
	if err != nil {
		return err
	}
	if m.OldTuple != nil {
		// The old row comes with REPLICA IDENTITY FULL, or when the
		// identity columns changed: the key may have moved.
		newKey, err := r.key(d.types, vals)
		if err != nil {
			return d.fail(ctx, r.qualified, "", err)
		}
		oldKey, err := r.oldKey(d.types, m.OldTuple, vals)
		switch {
		case err != nil:
			// Skipped, the old row had no key in the store to delete.
			if err := d.fail(ctx, r.qualified, "", err); err != nil {
				return err
			}
		case oldKey != newKey:
			d.buf.del(oldKey)
		}
	}
	return d.putRow(ctx, r, vals)
}

func (d *decoder) putRow(ctx context.Context, r *relation, vals [][]byte) error {
	key, err := r.key(d.types, vals)
	if err != nil {
		return d.fail(ctx, r.qualified, "", err)
	}
	val, err := r.enc.AppendRow(nil, vals)
	if err == nil {
		err = d.lim.validateEncoded(key, val)
	}
	if err != nil {
		return d.fail(ctx, r.qualified, key, err) // nil: skipped
	}
	d.buf.put(key, val)
	return nil
}

func (d *decoder) delete(ctx context.Context, r *relation, m *pglogrepl.DeleteMessage) error {
	if r.tmpl.Singleton() {
		d.buf.markNewest(r)
		return nil
	}
	if m.OldTuple == nil {
		return fmt.Errorf("table %s: delete without the old row's key", r.qualified)
	}
	key, err := r.oldKey(d.types, m.OldTuple, nil)
	if err != nil {
		return d.fail(ctx, r.qualified, "", err) // nil: skipped
	}
	d.buf.del(key)
	return nil
}

// truncate decodes the truncation of relation id: every key the
// transaction wrote so far for the table becomes a delete. It returns the
// relation whose keys in the store the session must list and pass to
// truncateKey (nil: none, the change is skipped or the table has a single
// key, resolved at commit).
func (d *decoder) truncate(ctx context.Context, id uint32) (*relation, error) {
	r, skip, err := d.relFor(ctx, id)
	if err != nil || skip {
		return nil, err
	}
	if r.tmpl.Singleton() {
		d.buf.markNewest(r)
		return nil, nil
	}
	for _, op := range slices.Clone(d.buf.ops) {
		if ours(r.tmpl.Match, d.prefix, op.Key) {
			d.buf.del(op.Key)
		}
	}
	return r, nil
}

// truncateKey deletes key, listed from the store under the template's
// prefix, when it is one of r's keys: it is matched against the template's
// shape, since "/Index/{id}" and "/Index/{index_id}/{id}" share a prefix.
func (d *decoder) truncateKey(r *relation, key string) bool {
	if !ours(r.tmpl.Match, d.prefix, key) {
		return false
	}
	d.buf.del(key)
	return true
}
