package agent

import (
	"github.com/bagger/lenkwerk/kvdriver"
)

// txnBuffer holds a transaction's changes coalesced per key: etcd rejects a
// key named twice in one Txn, and only a key's last change matters. It is
// flushed to the store in chunks when it reaches the batch limits, so memory
// stays bounded however large the transaction.
type txnBuffer struct {
	index map[string]int // key → position in ops
	ops   []kvdriver.Op
	bytes int // key + value bytes of ops
	// newest lists single-key tables (e.g. /Servermap) the transaction
	// touched; their key is recomputed from the database at commit.
	newest []*relation
}

func newTxnBuffer() *txnBuffer { return &txnBuffer{index: map[string]int{}} }

func (b *txnBuffer) set(op kvdriver.Op) {
	if i, ok := b.index[op.Key]; ok {
		b.bytes += len(op.Value) - len(b.ops[i].Value)
		b.ops[i] = op
		return
	}
	b.index[op.Key] = len(b.ops)
	b.ops = append(b.ops, op)
	b.bytes += len(op.Key) + len(op.Value)
}

func (b *txnBuffer) put(key string, value []byte) { b.set(kvdriver.Put(key, value)) }
func (b *txnBuffer) del(key string)               { b.set(kvdriver.Delete(key)) }

func (b *txnBuffer) markNewest(r *relation) {
	for _, x := range b.newest {
		if x.qualified == r.qualified {
			return
		}
	}
	b.newest = append(b.newest, r)
}

// drop removes the buffered operations on keys match accepts.
func (b *txnBuffer) drop(match func(key string) bool) {
	ops := b.take()
	for _, op := range ops {
		if !match(op.Key) {
			b.set(op)
		}
	}
}

// take returns the buffered operations and empties the buffer (the newest
// list stays: it is resolved at commit).
func (b *txnBuffer) take() []kvdriver.Op {
	ops := b.ops
	b.ops = nil
	b.bytes = 0
	clear(b.index)
	return ops
}

func (b *txnBuffer) reset() {
	b.take()
	b.newest = nil
}

// split cuts ops into batches that fit the limits (operations and key plus
// value bytes), keeping order, so a checkpoint placed last lands in the last
// batch.
func split(ops []kvdriver.Op, maxOps, maxBytes int) [][]kvdriver.Op {
	var out [][]kvdriver.Op
	start, size := 0, 0
	for i, op := range ops {
		n := len(op.Key) + len(op.Value)
		if i > start && (i-start >= maxOps || size+n > maxBytes) {
			out = append(out, ops[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(ops) {
		out = append(out, ops[start:])
	}
	return out
}
