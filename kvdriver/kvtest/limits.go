package kvtest

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

// testLimits: for each limit the driver reports, a write exactly at the
// limit succeeds and one beyond it fails with ErrTooLarge and writes
// nothing.
func testLimits(e *env) {
	t := e.t
	s := e.store()
	l := s.Limits()
	t.Logf("driver limits: %+v", l)

	t.Run("MaxKeyBytes", func(t *testing.T) { limitKey(e.sub(t), s, l) })
	t.Run("MaxValueBytes", func(t *testing.T) { limitValue(e.sub(t), s, l) })
	t.Run("MaxBatchOps", func(t *testing.T) { limitBatchOps(e.sub(t), s, l) })
	t.Run("MaxBatchBytes", func(t *testing.T) { limitBatchBytes(e.sub(t), s, l) })
}

// sub returns the env of a nested subtest, with its own prefix.
func (e *env) sub(t *testing.T) *env {
	name := t.Name()[strings.LastIndexByte(t.Name(), '/')+1:]
	return &env{t: t, h: e.h, prefix: e.prefix + "/" + name}
}

func limitKey(e *env, s *kvdriver.Store, l kvdriver.Limits) {
	max := kvdriver.DefaultMaxKeyBytes
	if l.MaxKeyBytes > 0 && l.MaxKeyBytes < max {
		max = l.MaxKeyBytes
	}
	base := e.key("k") + "/"
	if len(base) >= max {
		e.t.Fatalf("limit MaxKeyBytes %d is shorter than the suite's prefix %q", max, base)
	}
	at := base + strings.Repeat("k", max-len(base))
	rev := e.put(s, at, val(1))
	e.wantGet(s, at, val(1), rev)
	beyond := at + "k"
	_, err := s.Put(e.ctx(), beyond, val(1))
	if !errorsIsAny(err, kvdriver.ErrTooLarge, kvdriver.ErrInvalidKey) {
		e.t.Errorf("Put of a %d-byte key (limit %d): err = %v, want ErrTooLarge or ErrInvalidKey", len(beyond), max, err)
	}
	kvs, _ := e.list(s, e.key("k"))
	if len(kvs) != 1 {
		e.t.Errorf("after the refused long key, List = %d keys, want 1", len(kvs))
	}
}

func limitValue(e *env, s *kvdriver.Store, l kvdriver.Limits) {
	if l.MaxValueBytes <= 0 {
		e.t.Logf("no MaxValueBytes: nothing to check")
		return
	}
	k := e.key("v")
	v := jsonString(l.MaxValueBytes)
	rev := e.put(s, k, v)
	e.wantGet(s, k, v, rev)
	e.del(s, k)
	_, err := s.Put(e.ctx(), k, jsonString(l.MaxValueBytes+1))
	e.wantErr(err, kvdriver.ErrTooLarge, fmt.Sprintf("Put of a %d-byte value (MaxValueBytes %d)", l.MaxValueBytes+1, l.MaxValueBytes))
	e.wantNotFound(s, k, "after a Put beyond MaxValueBytes")
	_, err = s.Apply(e.ctx(), []kvdriver.Op{kvdriver.Put(e.key("v2"), val(1)), kvdriver.Put(k, jsonString(l.MaxValueBytes+1))})
	e.wantErr(err, kvdriver.ErrTooLarge, "Apply with a value beyond MaxValueBytes")
	e.wantEmpty(s, e.prefix, "after an Apply beyond MaxValueBytes")
}

func limitBatchOps(e *env, s *kvdriver.Store, l kvdriver.Limits) {
	if l.MaxBatchOps <= 0 {
		e.t.Logf("no MaxBatchOps: nothing to check")
		return
	}
	ops := func(n int, dir string) []kvdriver.Op {
		out := make([]kvdriver.Op, n)
		for i := range out {
			out[i] = kvdriver.Put(e.key(dir, fmt.Sprintf("%05d", i)), val(i))
		}
		return out
	}
	rev := e.apply(s, ops(l.MaxBatchOps, "at"))
	kvs, _ := e.list(s, e.key("at"))
	if len(kvs) != l.MaxBatchOps {
		e.t.Errorf("Apply of MaxBatchOps=%d ops: List has %d keys", l.MaxBatchOps, len(kvs))
	}
	for _, kv := range kvs {
		if kv.ModRevision != rev {
			e.t.Errorf("Apply of MaxBatchOps ops: %q has ModRevision %d, want %d", kv.Key, kv.ModRevision, rev)
			break
		}
	}
	_, err := s.Apply(e.ctx(), ops(l.MaxBatchOps+1, "beyond"))
	e.wantErr(err, kvdriver.ErrTooLarge, fmt.Sprintf("Apply of %d ops (MaxBatchOps %d)", l.MaxBatchOps+1, l.MaxBatchOps))
	e.wantEmpty(s, e.key("beyond"), "after an Apply beyond MaxBatchOps")
}

func limitBatchBytes(e *env, s *kvdriver.Store, l kvdriver.Limits) {
	if l.MaxBatchBytes <= 0 {
		e.t.Logf("no MaxBatchBytes: nothing to check")
		return
	}
	at, ok := batchOfSize(e, "at", l.MaxBatchBytes, l)
	if !ok {
		e.t.Logf("MaxBatchBytes %d cannot be reached within MaxBatchOps %d and MaxValueBytes %d: nothing to check", l.MaxBatchBytes, l.MaxBatchOps, l.MaxValueBytes)
		return
	}
	rev := e.apply(s, at)
	kvs, _ := e.list(s, e.key("at"))
	if len(kvs) != len(at) || (len(kvs) > 0 && kvs[0].ModRevision != rev) {
		e.t.Errorf("Apply of exactly MaxBatchBytes=%d bytes in %d ops: List has %d keys", l.MaxBatchBytes, len(at), len(kvs))
	}
	beyond, ok := batchOfSize(e, "beyond", l.MaxBatchBytes+1, l)
	if !ok {
		e.t.Logf("MaxBatchBytes %d + 1 cannot be built within the other limits: nothing beyond to check", l.MaxBatchBytes)
		return
	}
	_, err := s.Apply(e.ctx(), beyond)
	e.wantErr(err, kvdriver.ErrTooLarge, fmt.Sprintf("Apply of %d bytes in %d ops (MaxBatchBytes %d)", l.MaxBatchBytes+1, len(beyond), l.MaxBatchBytes))
	e.wantEmpty(s, e.key("beyond"), "after an Apply beyond MaxBatchBytes")
}

// batchOfSize builds puts whose keys plus values add up to exactly size
// bytes, within MaxBatchOps and MaxValueBytes.
func batchOfSize(e *env, dir string, size int, l kvdriver.Limits) ([]kvdriver.Op, bool) {
	klen := len(e.key(dir, "00000"))
	maxV := l.MaxValueBytes
	if maxV <= 0 {
		maxV = size
	}
	n := (size + klen + maxV - 1) / (klen + maxV)
	if l.MaxBatchOps > 0 && n > l.MaxBatchOps {
		return nil, false
	}
	vbytes := size - n*klen
	if vbytes < 2*n {
		return nil, false
	}
	ops := make([]kvdriver.Op, n)
	for i := range ops {
		v := vbytes / n
		if i < vbytes%n {
			v++
		}
		ops[i] = kvdriver.Put(e.key(dir, fmt.Sprintf("%05d", i)), jsonString(v))
	}
	return ops, true
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
