package agent

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
)

// Resync copies everything again from a fresh snapshot and removes keys
// matching no row; it refuses while an agent streams the slot.
func TestResync(t *testing.T) {
	e := newStreamingEnv(t)
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
	e := newStreamingEnv(t)
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

// The copy builds keys from the key columns' own to_jsonb values, the
// stream from pgoutput's text through pgjson: for awkward key values (text
// needing escapes, dot segments, numerics, floats, timestamps, a column
// named like the copy's alias t, one needing quotes) both must give the
// same keys, byte for byte, and the keys converge derives from the whole
// row's to_jsonb.
func TestCopiedKeysMatchStreamed(t *testing.T) {
	e := newEnv(t, "")
	e.seed() // the default tables, the single-key servermap among them
	e.exec(`CREATE TABLE storage.awk (id int PRIMARY KEY, t text, "Key ""Col""" varchar, n numeric, ts timestamptz, f float8)`)
	e.exec(`ALTER TABLE storage.awk REPLICA IDENTITY FULL`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.awk`)
	const insert = `INSERT INTO storage.awk VALUES
		(1, 'a/b', '100%', 1.50, '2026-01-02 03:04:05.123456+02', 0.1),
		(2, 'with space', 'ünï cödé', -0.000, 'infinity', 2.5e-7),
		(3, '.', '..', 1e20, '1999-12-31 23:59:59+00', -0),
		(4, '...', E'tab\tquote"back\\slash', 'NaN', '-infinity', 'NaN'),
		(5, '%2F', '/', 12345678901234567890.123456789, '2000-02-29 12:00:00.5-07:30', 'Infinity'),
		(6, 'emoji 🙂', 'x', 0, '0044-03-15 12:00:00+00 BC', 123456789.125)`
	e.exec(insert)
	cfg := e.config()
	cfg.Templates = map[string]string{"storage.awk": `/Awk/{t}/{Key "Col"}/{n}/{ts}/{f}`}
	opts := converge.Options{Templates: cfg.Templates}
	ctx := context.Background()
	keys := func() []string {
		t.Helper()
		kvs, _, err := e.store.List(ctx, "/Awk")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	want := []string{
		"/Awk/%252F/%2F/12345678901234567890.123456789/2000-02-29T19:30:00.5+00:00/Infinity",
		"/Awk/%2E/%2E%2E/100000000000000000000/1999-12-31T23:59:59+00:00/0",
		"/Awk/.../tab\tquote\"back\\slash/NaN/-infinity/NaN",
		"/Awk/a%2Fb/100%25/1.50/2026-01-02T01:04:05.123456+00:00/0.1",
		"/Awk/emoji 🙂/x/0/0044-03-15T12:00:00+00:00 BC/123456789.125",
		"/Awk/with space/ünï cödé/0.000/infinity/0.00000025",
	}

	e.run(cfg)
	e.converged(opts)
	copied := keys()
	if !slices.Equal(copied, want) {
		t.Fatalf("copied keys:\n%s\nwant:\n%s", strings.Join(copied, "\n"), strings.Join(want, "\n"))
	}
	// Streamed deletes find the copied keys (REPLICA IDENTITY FULL: the
	// key comes from the old row), streamed inserts write them again.
	e.exec(`DELETE FROM storage.awk`)
	e.converged(opts)
	if left := keys(); len(left) != 0 {
		t.Fatalf("keys left after the streamed delete: %q", left)
	}
	e.exec(insert)
	e.converged(opts)
	if streamed := keys(); !slices.Equal(streamed, copied) {
		t.Fatalf("streamed keys:\n%s\ncopied keys:\n%s", strings.Join(streamed, "\n"), strings.Join(copied, "\n"))
	}
}

// A key template column the table lacks stops the copy, as it stops the
// stream, even when a system column has that name: the copy selects key
// columns by name, and xmin would answer.
func TestCopyKeyColumnMissing(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TABLE storage.sys (id int PRIMARY KEY, v text)`)
	e.exec(`ALTER TABLE storage.sys REPLICA IDENTITY FULL`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.sys`)
	e.exec(`INSERT INTO storage.sys VALUES (1, 'one')`)
	cfg := e.config()
	cfg.Templates = map[string]string{"storage.sys": "/Sys/{xmin}"}
	a := e.start(cfg)
	var err error
	waitFor(t, "the error", 30*time.Second, func() bool { err = a.Status().Err; return err != nil })
	for _, want := range []string{"storage.sys", "/Sys/{xmin}", `column "xmin", which the table does not have`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if kvs, _, err := e.store.List(context.Background(), "/Sys"); err != nil || len(kvs) != 0 {
		t.Fatalf("keys under /Sys: %v, %v; want none", kvs, err)
	}
}
