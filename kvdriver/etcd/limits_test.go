package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestLimitsWorstCase writes the largest batch the limits allow, with the
// most per-operation overhead (128 operations, 1024-byte keys), to a
// default etcd server: the limits promise it is accepted.
func TestLimitsWorstCase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := etcdtest.New(t)
	s, err := kvdriver.Open(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := s.Limits()

	key := func(i int) string {
		k := fmt.Sprintf("/limits/%03d/", i)
		return k + strings.Repeat("k", l.MaxKeyBytes-len(k))
	}
	value := func(n int) []byte { return []byte(`"` + strings.Repeat("v", n-2) + `"`) }

	ops := make([]kvdriver.Op, l.MaxBatchOps)
	per := (l.MaxBatchBytes - l.MaxBatchOps*l.MaxKeyBytes) / l.MaxBatchOps
	total := 0
	for i := range ops {
		n := per
		if i == len(ops)-1 {
			n = l.MaxBatchBytes - total - l.MaxKeyBytes
		}
		ops[i] = kvdriver.Put(key(i), value(n))
		total += l.MaxKeyBytes + n
	}
	if total != l.MaxBatchBytes {
		t.Fatalf("test batch is %d bytes, want %d", total, l.MaxBatchBytes)
	}
	if _, err := s.Apply(ctx, ops); err != nil {
		t.Fatalf("Apply of a batch at every limit: %v", err)
	}
	if _, err := s.Put(ctx, key(999), value(l.MaxValueBytes)); err != nil {
		t.Fatalf("Put of the longest key with the largest value: %v", err)
	}
}

// TestServerTooLarge: a server with lower limits than etcd's defaults
// refuses what the driver's validation lets through; the error still
// wraps ErrTooLarge.
func TestServerTooLarge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdtest.StartServer(ctx, etcdtest.Options{Dir: t.TempDir(), UnsafeNoFsync: true, MaxRequestBytes: 64 << 10, MaxTxnOps: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s, err := kvdriver.Open(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Put(ctx, "/big", []byte(`"`+strings.Repeat("x", 100<<10)+`"`))
	if !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("Put larger than the server's max-request-bytes = %v, want ErrTooLarge", err)
	}
	var ops []kvdriver.Op
	for i := range 5 {
		ops = append(ops, kvdriver.Put(fmt.Sprintf("/op/%d", i), []byte(`1`)))
	}
	_, err = s.Apply(ctx, ops)
	if !errors.Is(err, kvdriver.ErrTooLarge) {
		t.Errorf("Apply of more ops than the server's max-txn-ops = %v, want ErrTooLarge", err)
	}
}
