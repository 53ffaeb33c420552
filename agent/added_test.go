package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/jackc/pglogrepl"
)

// A change of a table the agent does not mirror is left out and the table
// recorded for the session to admit at the commit; the record does not
// outlive the transaction.
func TestDecoderRecordsTablesToAdmit(t *testing.T) {
	d := testDecoder(t)
	d.mirrored = func(table string) bool { return table != "public.items" }
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t")})
	if r, err := d.truncate(context.Background(), 7); err != nil || r != nil {
		t.Fatalf("truncate of a table not mirrored: %v, %v; want nothing to list", r, err)
	}
	if !d.admitting["public.items"] || len(d.admitting) != 1 {
		t.Fatalf("admitting %v, want public.items", d.admitting)
	}
	if txn := commit(t, d, 0x1000); txn.rows != 0 {
		t.Errorf("%d rows decoded, want 0", txn.rows)
	}
	wantOps(t, d.buf.take(), "")
	d.end()
	begin(t, d, 101, 0x2000, 0)
	if len(d.admitting) != 0 {
		t.Fatalf("admitting %v after the transaction ended", d.admitting)
	}
}

// A table added to the publication in the transaction that changes it,
// next to a table the agent mirrors, and truncated with it in one
// TRUNCATE: the store ends equal to the database, the added table's rows
// of the transaction neither lost nor doubled.
func TestTableAddedInMultiTableTruncate(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TABLE storage.kept (id int PRIMARY KEY, v text)`)
	e.exec(`INSERT INTO storage.kept SELECT g, 'k' || g FROM generate_series(1, 50) g`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.kept`)
	e.exec(`CREATE TABLE storage.late (id int PRIMARY KEY, v text)`)
	e.exec(`INSERT INTO storage.late SELECT g, 'l' || g FROM generate_series(1, 50) g`)
	cfg := e.config()
	// No periodic poll after the first: the tables are admitted at the
	// commits that change them.
	cfg.PollInterval = time.Hour
	a := e.run(cfg)
	e.converged(converge.Options{})
	mustGet(t, e, "/storage/kept/1")
	// A change of a table not published is left out.
	e.exec(`UPDATE storage.late SET v = 'unpublished' WHERE id = 1`)
	e.exec(`UPDATE storage.kept SET v = 'marker' WHERE id = 1`)
	waitFor(t, "the marker", 30*time.Second, func() bool { v, _ := e.get("/storage/kept/1"); return strings.Contains(v, "marker") })
	if _, ok := e.get("/storage/late/1"); ok {
		t.Fatal("/storage/late/1 mirrored before its table was published")
	}
	tx, err := e.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`UPDATE storage.kept SET v = 'before' WHERE id = 2`,
		`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.late`,
		`INSERT INTO storage.late VALUES (100, 'hundred')`,
		`UPDATE storage.late SET v = 'changed' WHERE id = 3`,
		`TRUNCATE storage.kept, storage.late`,
		`INSERT INTO storage.kept VALUES (7, 'after')`,
		`INSERT INTO storage.late VALUES (8, 'after'), (9, 'after')`,
		`UPDATE storage.late SET v = 'again' WHERE id = 9`,
	} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	if v := mustGet(t, e, "/storage/late/9"); !strings.Contains(v, "again") {
		t.Fatalf("/storage/late/9 = %s", v)
	}
	for _, k := range []string{"/storage/late/1", "/storage/late/100", "/storage/kept/2"} {
		if v, ok := e.get(k); ok {
			t.Fatalf("%s = %s after the TRUNCATE", k, v)
		}
	}

	// Then a transaction adding a table with rows changed next to the
	// mirrored one, which a later transaction changes again.
	e.exec(`CREATE TABLE storage.later (id int PRIMARY KEY, v text)`)
	e.exec(`INSERT INTO storage.later SELECT g, 'x' || g FROM generate_series(1, 20) g`)
	tx, err = e.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO storage.kept VALUES (10, 'ten')`,
		`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.later`,
		`DELETE FROM storage.later WHERE id <= 5`,
		`UPDATE storage.later SET v = 'y' WHERE id = 6`,
		`INSERT INTO storage.kept VALUES (11, 'eleven')`,
	} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.exec(`UPDATE storage.later SET v = 'z' WHERE id = 6`)
	e.converged(converge.Options{})
	if v := mustGet(t, e, "/storage/later/6"); !strings.Contains(v, `"z"`) {
		t.Fatalf("/storage/later/6 = %s", v)
	}
	if _, ok := e.get("/storage/later/5"); ok {
		t.Fatal("/storage/later/5 mirrored after its delete")
	}
	ck := e.checkpoint()
	for _, table := range []string{"storage.late", "storage.later"} {
		if ck.Tables[table] == "" {
			t.Errorf("checkpoint tables %v lack %s", ck.Tables, table)
		}
	}
	if st := a.Status(); st.Err != nil {
		t.Fatal(st.Err)
	}
}
