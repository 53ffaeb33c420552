package agent

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
)

// Resync copies everything again from a fresh snapshot and removes keys
// matching no row; it refuses while an agent streams the slot.
func TestResync(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	e.run(e.config())
	e.converged(converge.Options{})
	ctx := context.Background()
	if err := Resync(ctx, e.config()); !isSlotActive(err) {
		t.Fatalf("Resync with the agent running: %v, want the slot-in-use error", err)
	}
	e.stop()
	e.exec(`SELECT storage.save_config('while_stopped', '1')`)
	for _, kv := range [][2]string{{"/Index/77", `{"id": 77}`}, {"/Config/retention", `"garbage"`}} {
		if _, err := e.store.Put(ctx, kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.store.Delete(ctx, "/Index/1"); err != nil {
		t.Fatal(err)
	}
	before := e.checkpoint().LSN
	if err := Resync(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	if after := e.checkpoint().LSN; after <= before {
		t.Fatalf("checkpoint %s after resync, not past %s", after, before)
	}
	e.run(e.config())
	e.exec(`SELECT storage.save_config('after_resync', '1')`)
	e.converged(converge.Options{})
}

// A store that lost data (restored from a backup: its checkpoint is behind
// what the slot was confirmed to) or was wiped is copied again on start.
func TestStoreRestoredOrWiped(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	e.run(e.config())
	e.converged(converge.Options{})
	ctx := context.Background()
	old, err := e.store.Get(ctx, CheckpointKey("", e.slot))
	if err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT storage.save_config('lost', '1')`)
	e.exec(`DELETE FROM storage.dimension WHERE id = 1`)
	e.converged(converge.Options{})
	waitFor(t, "confirmation", 10*time.Second, func() bool { return e.slotConfirmed() >= e.checkpoint().LSN })
	e.stop()
	// The "backup": the old checkpoint, without the newer key, with a
	// deleted key back.
	if _, err := e.store.Put(ctx, old.Key, old.Value); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Delete(ctx, "/Config/lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctx, "/Dimension/1", []byte(`{"id": 1}`)); err != nil {
		t.Fatal(err)
	}
	e.run(e.config())
	e.converged(converge.Options{})
	e.stop()

	// Wiped.
	kvs, _, err := e.store.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if _, err := e.store.Delete(ctx, kv.Key); err != nil {
			t.Fatal(err)
		}
	}
	e.run(e.config())
	e.converged(converge.Options{})
}
