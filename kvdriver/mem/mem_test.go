package mem_test

import (
	"context"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
)

// harness opens every store on one named in-process store, like
// connections to one server.
type harness struct{ name string }

func (h *harness) MakeStore(ctx context.Context, t *testing.T) (kvdriver.Store, error) {
	return kvdriver.Open(ctx, "mem://"+h.name)
}

func (h *harness) Close() {}

func TestConformance(t *testing.T) {
	kvtest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kvtest.Harness, error) {
		return &harness{name: "conformance-" + t.Name()}, nil
	})
}
