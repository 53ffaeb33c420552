package bench

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
)

// Discard is a store driver that keeps only the agent's reserved keys (its
// checkpoint) and counts and drops every other write: with it, an
// in-process agent does its decoding and JSON encoding and nothing else.
type Discard struct {
	// Ops counts the operations applied on other keys.
	Ops atomic.Int64

	mu   sync.Mutex
	keep map[string][]byte
	rev  int64
}

var _ kvdriver.Driver = (*Discard)(nil)

// NewDiscard returns an empty Discard store.
func NewDiscard() *Discard { return &Discard{keep: map[string][]byte{}, rev: 1} }

func reserved(key string) bool { return strings.Contains(key, "/"+agent.ReservedSegment+"/") }

// Get returns a kept key.
func (d *Discard) Get(_ context.Context, key string) (kvdriver.KV, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.keep[key]
	if !ok {
		return kvdriver.KV{}, kvdriver.ErrNotFound
	}
	return kvdriver.KV{Key: key, Value: v, ModRevision: d.rev}, nil
}

// List lists the kept keys under prefix (unsorted: the agent does not care).
func (d *Discard) List(_ context.Context, prefix string) ([]kvdriver.KV, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var kvs []kvdriver.KV
	for k, v := range d.keep {
		if k == prefix || strings.HasPrefix(k, prefix+"/") {
			kvs = append(kvs, kvdriver.KV{Key: k, Value: v, ModRevision: d.rev})
		}
	}
	return kvs, d.rev, nil
}

// Apply keeps reserved keys and counts the rest.
func (d *Discard) Apply(_ context.Context, ops []kvdriver.Op) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rev++
	for _, op := range ops {
		if !reserved(op.Key) {
			d.Ops.Add(1)
			continue
		}
		// OpRequire is not checked: a benchmark runs one agent, which is
		// all the fence guards against.
		switch op.Type {
		case kvdriver.OpPut:
			d.keep[op.Key] = op.Value
		case kvdriver.OpDelete:
			delete(d.keep, op.Key)
		}
	}
	return d.rev, nil
}

// Watch reports nothing until ctx is done.
func (d *Discard) Watch(ctx context.Context, _ string, _ int64) <-chan kvdriver.WatchResponse {
	ch := make(chan kvdriver.WatchResponse)
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch
}

// Compact does nothing.
func (d *Discard) Compact(context.Context, int64) error { return nil }

// Limits are none: the agent caps batches itself.
func (d *Discard) Limits() kvdriver.Limits {
	return kvdriver.Limits{MaxKeyBytes: kvdriver.DefaultMaxKeyBytes}
}

// ErrorCode classifies nothing: Discard fails only with sentinels.
func (d *Discard) ErrorCode(error) kvdriver.ErrorCode { return kvdriver.Unknown }

// Close does nothing.
func (d *Discard) Close() error { return nil }
