package agent

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

// The decoder's tests build pgoutput messages by hand and run without a
// server: the decoder holds no connection (TestDecoderHoldsNoConnection),
// its types are the built-in ones, and the hooks that would reach the
// server or the store (mirrored, skip) stay nil unless a test sets them.

// Column type OIDs (pg_type.dat).
const (
	oidBool = 16
	oidInt4 = 23
	oidText = 25
)

func testDecoder(t *testing.T) *decoder {
	t.Helper()
	m, err := keymap.New("", nil)
	if err != nil {
		t.Fatal(err)
	}
	return newDecoder(m, pgjson.NewTypeMap(), "", batchLimits{ops: 100, bytes: 1 << 20})
}

// items is the Relation message of public.items (id int4, the key; name
// text; active bool), replica identity default (its primary key, id).
func items(relID uint32, extra ...*pglogrepl.RelationMessageColumn) *pglogrepl.RelationMessage {
	cols := append([]*pglogrepl.RelationMessageColumn{
		{Flags: 1, Name: "id", DataType: oidInt4, TypeModifier: -1},
		{Name: "name", DataType: oidText, TypeModifier: -1},
		{Name: "active", DataType: oidBool, TypeModifier: -1},
	}, extra...)
	return &pglogrepl.RelationMessage{RelationID: relID, Namespace: "public", RelationName: "items",
		ReplicaIdentity: 'd', ColumnNum: uint16(len(cols)), Columns: cols}
}

var itemsInfo = tableInfo{schema: "public", name: "items", identity: 'd', pk: []string{"id"}, identCols: []string{"id"}}

// row is a tuple of text values; nil is NULL.
func row(vals ...any) *pglogrepl.TupleData {
	td := &pglogrepl.TupleData{ColumnNum: uint16(len(vals))}
	for _, v := range vals {
		switch v := v.(type) {
		case nil:
			td.Columns = append(td.Columns, &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull})
		case string:
			td.Columns = append(td.Columns, &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Length: uint32(len(v)), Data: []byte(v)})
		default:
			panic(fmt.Sprintf("row: %T", v))
		}
	}
	return td
}

func begin(t *testing.T, d *decoder, xid uint32, final, ck pglogrepl.LSN) {
	t.Helper()
	if err := d.begin(&pglogrepl.BeginMessage{FinalLSN: final, Xid: xid, CommitTime: time.Unix(1700000000, 0)}, ck); err != nil {
		t.Fatal(err)
	}
}

func change(t *testing.T, d *decoder, m pglogrepl.Message) {
	t.Helper()
	if err := d.change(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func commit(t *testing.T, d *decoder, final pglogrepl.LSN) *commitInfo {
	t.Helper()
	txn, err := d.commit(&pglogrepl.CommitMessage{CommitLSN: final, TransactionEndLSN: final + 8, CommitTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	return txn
}

// opsString renders operations one a line: "put key value" or "del key".
func opsString(ops []kvdriver.Op) string {
	var b strings.Builder
	for _, op := range ops {
		switch op.Type {
		case kvdriver.OpPut:
			fmt.Fprintf(&b, "put %s %s\n", op.Key, op.Value)
		case kvdriver.OpDelete:
			fmt.Fprintf(&b, "del %s\n", op.Key)
		default:
			fmt.Fprintf(&b, "op%d %s\n", op.Type, op.Key)
		}
	}
	return b.String()
}

func wantOps(t *testing.T, got []kvdriver.Op, want string) {
	t.Helper()
	if g := opsString(got); g != want {
		t.Fatalf("operations:\n%s\nwant:\n%s", g, want)
	}
}

func TestDecoderInsertUpdateDelete(t *testing.T) {
	d := testDecoder(t)
	if d.relation(items(7), itemsInfo, nil) {
		t.Fatal("a first Relation message reported a changed shape")
	}
	begin(t, d, 100, 0x1000, 0)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t")})
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("2", "two", nil)})
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("3", "three", "f")})
	change(t, d, &pglogrepl.UpdateMessage{RelationID: 7, NewTuple: row("2", "zwei", "t")})
	// Replica identity default: the old row carries the key only.
	change(t, d, &pglogrepl.DeleteMessage{RelationID: 7, OldTupleType: pglogrepl.DeleteMessageTupleTypeKey, OldTuple: row("3", nil, nil)})
	txn := commit(t, d, 0x1000)
	if txn == nil || txn.xid != 100 || txn.rows != 5 || txn.commitLSN != 0x1000 || txn.endLSN != 0x1008 {
		t.Fatalf("commit: %+v, want xid 100, 5 rows, commit 0/1000, end 0/1008", txn)
	}
	// Coalesced per key, in the order keys were first written; values are
	// to_jsonb's (keys ordered by length, then bytes).
	wantOps(t, d.buf.take(), `put /public/items/1 {"id": 1, "name": "one", "active": true}
put /public/items/2 {"id": 2, "name": "zwei", "active": true}
del /public/items/3
`)
	d.end()
	if d.inTxn || len(d.buf.ops) != 0 {
		t.Fatalf("after end: in a transaction %v, %d operations buffered", d.inTxn, len(d.buf.ops))
	}
}

func TestDecoderUpdateMovesKey(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0)
	// The key column changed: pgoutput sends the old key.
	change(t, d, &pglogrepl.UpdateMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeKey,
		OldTuple: row("1", nil, nil), NewTuple: row("5", "one", "t")})
	// With the key unchanged (REPLICA IDENTITY FULL sends the old row
	// anyway) nothing is deleted.
	change(t, d, &pglogrepl.UpdateMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld,
		OldTuple: row("6", "six", "t"), NewTuple: row("6", "sechs", "t")})
	commit(t, d, 0x1000)
	wantOps(t, d.buf.take(), `del /public/items/1
put /public/items/5 {"id": 5, "name": "one", "active": true}
put /public/items/6 {"id": 6, "name": "sechs", "active": true}
`)
}

// A truncate turns the transaction's writes to the table into deletes
// and reports the table, whose listed keys then go too: only those of the
// table's shape, never the agent's own.
func TestDecoderTruncate(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t")})
	r, err := d.truncate(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil || r.qualified != "public.items" || !strings.HasPrefix("/public/items/1", r.tmpl.ListPrefix()) {
		t.Fatalf("truncate reported %+v, want public.items, its keys listed under /public/items", r)
	}
	for key, want := range map[string]bool{
		"/public/items/2":                true,
		"/public/items/2/3":              false, // another shape under the prefix
		"/public/itemsx/2":               false,
		"/.lenkwerk/checkpoint/lw_agent": false,
	} {
		if got := d.truncateKey(r, key); got != want {
			t.Errorf("truncateKey(%q) = %v, want %v", key, got, want)
		}
	}
	// A row inserted after the truncate in the same transaction stays.
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("9", "nine", "t")})
	commit(t, d, 0x1000)
	wantOps(t, d.buf.take(), `del /public/items/1
del /public/items/2
put /public/items/9 {"id": 9, "name": "nine", "active": true}
`)
}

// A single-key table's changes write nothing: the session reads its
// newest row at commit.
func TestDecoderSingleKeyTable(t *testing.T) {
	d := testDecoder(t)
	d.relation(&pglogrepl.RelationMessage{RelationID: 8, Namespace: "storage", RelationName: "servermap", ReplicaIdentity: 'd', ColumnNum: 1,
		Columns: []*pglogrepl.RelationMessageColumn{{Flags: 1, Name: "generation", DataType: oidInt4}}},
		tableInfo{schema: "storage", name: "servermap", identity: 'd', pk: []string{"generation"}}, nil)
	begin(t, d, 100, 0x1000, 0)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 8, Tuple: row("1")})
	change(t, d, &pglogrepl.DeleteMessage{RelationID: 8, OldTuple: row("1")})
	if r, err := d.truncate(context.Background(), 8); err != nil || r != nil {
		t.Fatalf("truncate of a single-key table: %v, %v; want nothing to list", r, err)
	}
	commit(t, d, 0x1000)
	if len(d.buf.ops) != 0 || len(d.buf.newest) != 1 || d.buf.newest[0].qualified != "storage.servermap" {
		t.Fatalf("ops %q, newest %v; want none and storage.servermap once", opsString(d.buf.ops), d.buf.newest)
	}
}

func TestDecoderUnknownRelation(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0)
	err := d.change(context.Background(), &pglogrepl.InsertMessage{RelationID: 8, Tuple: row("1", "one", "t")})
	if err == nil || !strings.Contains(err.Error(), "relation 8 without a Relation message") {
		t.Fatalf("insert into an unknown relation: %v", err)
	}
	if _, err := d.truncate(context.Background(), 8); err == nil {
		t.Fatal("truncate of an unknown relation: no error")
	}
	if len(d.buf.ops) != 0 || d.rows != 0 {
		t.Fatalf("%d operations, %d rows after changes of an unknown relation", len(d.buf.ops), d.rows)
	}
}

// A relation that cannot be mirrored is an error only when one of its
// changes must be applied, and the error names the table.
func TestDecoderRelationThatCannotBeMirrored(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7, &pglogrepl.RelationMessageColumn{Name: "tags", DataType: 987654}), itemsInfo, nil) // a type the map does not know
	begin(t, d, 100, 0x1000, 0)
	err := d.change(context.Background(), &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t", "x")})
	var ve *ValueError
	if !errors.As(err, &ve) || ve.Table != "public.items" || ve.CommitLSN != 0x1000 || !errors.Is(err, pgjson.ErrUnknownType) || !strings.Contains(err.Error(), `"tags"`) {
		t.Fatalf("insert into a relation with an unknown type: %v, want a ValueError of public.items naming column tags", err)
	}
}

// A Relation message sent again with other columns (ALTER TABLE) replaces
// the relation and reports the change; the same shape again does not.
func TestDecoderRelationReshaped(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	if d.relation(items(7), itemsInfo, nil) {
		t.Fatal("the same columns again reported a changed shape")
	}
	if !d.relation(items(7, &pglogrepl.RelationMessageColumn{Name: "note", DataType: oidText}), itemsInfo, nil) {
		t.Fatal("an added column did not report a changed shape")
	}
	begin(t, d, 100, 0x1000, 0)
	err := d.change(context.Background(), &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t")})
	if err == nil || !strings.Contains(err.Error(), "row has 3 columns, relation has 4") {
		t.Fatalf("a row of the old shape: %v", err)
	}
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t", "hi")})
	commit(t, d, 0x1000)
	wantOps(t, d.buf.take(), `put /public/items/1 {"id": 1, "name": "one", "note": "hi", "active": true}
`)
}

// A value that cannot be encoded is a ValueError naming the table, the key
// and the column; nothing of the row is buffered. Told to skip it, the
// decoder leaves exactly that change out.
func TestDecoderValueCannotBeEncoded(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0)
	bad := &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "maybe")}
	err := d.change(context.Background(), bad)
	var ve *ValueError
	if !errors.As(err, &ve) {
		t.Fatalf("a boolean column holding %q: %v, want a ValueError", "maybe", err)
	}
	if ve.Table != "public.items" || ve.Key != "/public/items/1" || ve.CommitLSN != 0x1000 || ve.CommitTime.IsZero() {
		t.Fatalf("ValueError %+v, want table public.items, key /public/items/1, commit 0/1000 and its time", ve)
	}
	for _, s := range []string{"public.items", "/public/items/1", `column "active"`, "maybe"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	// A NULL key column: the key cannot be built.
	err = d.change(context.Background(), &pglogrepl.InsertMessage{RelationID: 7, Tuple: row(nil, "none", "t")})
	if !errors.As(err, &ve) || ve.Key != "" || !strings.Contains(err.Error(), "public.items") {
		t.Fatalf("a NULL key: %v, want a ValueError of public.items without key", err)
	}
	if len(d.buf.ops) != 0 {
		t.Fatalf("rows that cannot be mirrored buffered %q", opsString(d.buf.ops))
	}

	var asked []*ValueError
	d.skip = func(_ context.Context, ve *ValueError) bool {
		asked = append(asked, ve)
		return ve.Key == "/public/items/1"
	}
	change(t, d, bad)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("2", "two", "t")})
	if len(asked) != 1 || asked[0].Key != "/public/items/1" {
		t.Fatalf("skip asked about %v, want the bad row once", asked)
	}
	commit(t, d, 0x1000)
	wantOps(t, d.buf.take(), `put /public/items/2 {"id": 2, "name": "two", "active": true}
`)
}

// A transaction larger than a batch: the decoder reports full at the
// limits, the session takes a chunk, and every row arrives once, in order.
func TestDecoderManyRows(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	const rows = 1000
	begin(t, d, 100, 0x1000, 0)
	var all []kvdriver.Op
	chunks := 0
	for i := range rows {
		change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row(fmt.Sprint(i), "x", "t")})
		if d.full() {
			chunk := d.buf.take()
			if len(chunk) > d.lim.ops {
				t.Fatalf("chunk of %d operations, more than a batch (%d)", len(chunk), d.lim.ops)
			}
			all = append(all, chunk...)
			chunks++
		}
	}
	txn := commit(t, d, 0x1000)
	all = append(all, d.buf.take()...)
	if txn.rows != rows || len(all) != rows || chunks != rows/d.lim.ops {
		t.Fatalf("%d rows counted, %d operations in %d chunks; want %d rows in %d chunks", txn.rows, len(all), chunks, rows, rows/d.lim.ops)
	}
	for i, op := range all {
		if want := fmt.Sprintf("/public/items/%d", i); op.Key != want || op.Type != kvdriver.OpPut {
			t.Fatalf("operation %d: %s %s, want a put of %s", i, opsString([]kvdriver.Op{op}), op.Key, want)
		}
	}
}

// A transaction whose commit starts before the checkpoint is in the store:
// its changes are skipped whole, as are a copied table's changes committed
// before its copy.
func TestDecoderSkipsWhatTheStoreHas(t *testing.T) {
	d := testDecoder(t)
	d.relation(items(7), itemsInfo, nil)
	begin(t, d, 100, 0x1000, 0x2000)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("1", "one", "t")})
	if txn := commit(t, d, 0x1000); txn != nil || len(d.buf.ops) != 0 {
		t.Fatalf("a transaction before the checkpoint: %+v, %d operations; want it skipped", txn, len(d.buf.ops))
	}
	d.end()
	d.copiedAt["public.items"] = 0x3000
	begin(t, d, 101, 0x2800, 0x2000)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("2", "two", "t")})
	if len(d.buf.ops) != 0 {
		t.Fatalf("a change committed before the table's copy was buffered: %q", opsString(d.buf.ops))
	}
	d.end()
	begin(t, d, 102, 0x3800, 0x2000)
	change(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: row("3", "three", "t")})
	if len(d.buf.ops) != 1 {
		t.Fatalf("a change committed after the table's copy: %q, want it buffered", opsString(d.buf.ops))
	}
}

func TestDecoderTransactionBoundaries(t *testing.T) {
	d := testDecoder(t)
	if _, err := d.commit(&pglogrepl.CommitMessage{CommitLSN: 0x1000}); err == nil {
		t.Fatal("COMMIT without BEGIN: no error")
	}
	begin(t, d, 100, 0x1000, 0)
	if err := d.begin(&pglogrepl.BeginMessage{FinalLSN: 0x2000, Xid: 101}, 0); err == nil {
		t.Fatal("BEGIN inside a transaction: no error")
	}
}

// The decoder reaches neither server nor store: none of its fields, at
// any depth, is a connection, a store or anything else from the packages
// that talk to them (its two hooks are the session's, nil here).
func TestDecoderHoldsNoConnection(t *testing.T) {
	forbidden := []string{"github.com/jackc/pgx/", "database/sql", "net"}
	store, driver := reflect.TypeFor[kvdriver.Store](), reflect.TypeFor[kvdriver.Driver]()
	seen := map[reflect.Type]bool{}
	var walk func(path string, ty reflect.Type)
	walk = func(path string, ty reflect.Type) {
		if seen[ty] {
			return
		}
		seen[ty] = true
		for _, p := range forbidden {
			if pkg := ty.PkgPath(); pkg == p || strings.HasPrefix(pkg, p+"/") || strings.HasSuffix(p, "/") && strings.HasPrefix(pkg, p) {
				t.Errorf("decoder%s is a %v", path, ty)
			}
		}
		if ty == store || ty.Kind() != reflect.Interface && ty.Implements(driver) {
			t.Errorf("decoder%s is a store (%v)", path, ty)
		}
		switch ty.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Chan:
			walk(path, ty.Elem())
		case reflect.Map:
			walk(path+"[key]", ty.Key())
			walk(path+"[]", ty.Elem())
		case reflect.Struct:
			for i := range ty.NumField() {
				f := ty.Field(i)
				walk(path+"."+f.Name, f.Type)
			}
		case reflect.Interface:
			if ty != reflect.TypeFor[error]() && ty.NumMethod() > 0 {
				t.Errorf("decoder%s is an interface (%v): it could hold a connection", path, ty)
			}
		}
	}
	walk("", reflect.TypeFor[decoder]())
	d := testDecoder(t)
	if d.mirrored != nil || d.skip != nil {
		t.Error("a new decoder has hooks set")
	}
}
