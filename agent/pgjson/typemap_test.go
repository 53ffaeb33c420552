package pgjson_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5/pgxpool"
)

func typeOID(t *testing.T, ctx context.Context, q pgjson.Querier, name string) uint32 {
	t.Helper()
	rows, err := q.Query(ctx, "SELECT $1::regtype::oid", name)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var oid uint32
	for rows.Next() {
		if err := rows.Scan(&oid); err != nil {
			t.Fatal(err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return oid
}

// A user type with a cast to json is encoded by to_jsonb through the cast:
// we refuse it by name rather than write a different value.
func TestUnsupportedTypeIsNamed(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, ctx, pgtest.NewDatabase(t), map[string]string{"TimeZone": "UTC"})
	if _, err := conn.Exec(ctx, `CREATE TYPE castenum AS ENUM ('x');
		CREATE FUNCTION castenum_json(castenum) RETURNS json IMMUTABLE LANGUAGE sql AS $$ SELECT json_build_object('v', $1::text) $$;
		CREATE CAST (castenum AS json) WITH FUNCTION castenum_json(castenum);
		CREATE DOMAIN castdom AS castenum;
		CREATE TYPE holder AS (a int, e castenum)`); err != nil {
		t.Fatal(err)
	}
	var viaCast string
	if err := conn.QueryRow(ctx, `SELECT to_jsonb(ROW('x'::castenum))::text`).Scan(&viaCast); err != nil {
		t.Fatal(err)
	}
	if viaCast != `{"f1": {"v": "x"}}` {
		t.Fatalf("to_jsonb does not use the cast (%s): the refusal below is not needed", viaCast)
	}
	for _, name := range []string{"castenum", "castdom", "holder", "castenum[]", "holder[]"} {
		types := pgjson.NewTypeMap()
		_, err := types.Encoder(ctx, conn, []pgjson.Column{{Name: "c", TypeOID: typeOID(t, ctx, conn, name)}})
		if !errors.Is(err, pgjson.ErrUnsupportedType) || !strings.Contains(err.Error(), "public.castenum") {
			t.Errorf("%s: err = %v, want ErrUnsupportedType naming public.castenum", name, err)
		}
	}
}

func TestUnknownType(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, ctx, pgtest.NewDatabase(t), nil)
	types := pgjson.NewTypeMap()
	_, err := types.Encoder(ctx, conn, []pgjson.Column{{Name: "c", TypeOID: 4000000000}})
	if !errors.Is(err, pgjson.ErrUnknownType) || !strings.Contains(err.Error(), "4000000000") {
		t.Fatalf("err = %v, want ErrUnknownType naming the oid", err)
	}
	if _, err := conn.Exec(ctx, `CREATE TYPE e AS ENUM ('a')`); err != nil {
		t.Fatal(err)
	}
	oid := typeOID(t, ctx, conn, "e")
	_, err = types.NewEncoder([]pgjson.Column{{Name: "col", TypeOID: oid}})
	if !errors.Is(err, pgjson.ErrUnknownType) || !strings.Contains(err.Error(), `"col"`) {
		t.Fatalf("NewEncoder before Load: err = %v, want ErrUnknownType naming the column", err)
	}
	if _, err := types.AppendValue(nil, oid, []byte("a")); !errors.Is(err, pgjson.ErrUnknownType) {
		t.Fatalf("AppendValue before Load: err = %v, want ErrUnknownType", err)
	}
	if err := types.Load(ctx, conn, oid); err != nil {
		t.Fatal(err)
	}
	got, err := types.AppendValue(nil, oid, []byte("a"))
	if err != nil || string(got) != `"a"` {
		t.Fatalf("after Load: %s, %v", got, err)
	}
}

// After ALTER TYPE the cached composite no longer matches the values: the
// encoder says so, and Invalidate makes the map read the new definition.
func TestInvalidateAfterAlterType(t *testing.T) {
	ctx := context.Background()
	conn := connect(t, ctx, pgtest.NewDatabase(t), map[string]string{"TimeZone": "UTC"})
	if _, err := conn.Exec(ctx, `CREATE TYPE pair AS (a int, b text); CREATE TABLE t (c pair)`); err != nil {
		t.Fatal(err)
	}
	types := pgjson.NewTypeMap()
	cols := []pgjson.Column{{Name: "c", TypeOID: typeOID(t, ctx, conn, "pair")}}
	enc, err := types.Encoder(ctx, conn, cols)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `ALTER TYPE pair ADD ATTRIBUTE z bool; INSERT INTO t VALUES (ROW(1, 'x', true))`); err != nil {
		t.Fatal(err)
	}
	var text, want string
	if err := conn.QueryRow(ctx, `SELECT c::text, to_jsonb(t)::text FROM t`).Scan(&text, &want); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.AppendRow(nil, [][]byte{[]byte(text)}); !errors.Is(err, pgjson.ErrTypeChanged) {
		t.Fatalf("stale encoder: err = %v, want ErrTypeChanged", err)
	}
	// Without Invalidate the map still has the old definition.
	if enc, err = types.Encoder(ctx, conn, cols); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.AppendRow(nil, [][]byte{[]byte(text)}); !errors.Is(err, pgjson.ErrTypeChanged) {
		t.Fatalf("cached type: err = %v, want ErrTypeChanged", err)
	}
	types.Invalidate()
	if enc, err = types.Encoder(ctx, conn, cols); err != nil {
		t.Fatal(err)
	}
	got, err := enc.AppendRow(nil, [][]byte{[]byte(text)})
	if err != nil || string(got) != want {
		t.Fatalf("after Invalidate: %s, %v; want %s", got, err, want)
	}
}

// Loads, encodes and invalidations from many goroutines (run with -race).
func TestTypeMapConcurrent(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TYPE e AS ENUM ('a', 'b');
		CREATE TYPE c AS (x e, y int[], z e[]);
		CREATE DOMAIN d AS c`); err != nil {
		t.Fatal(err)
	}
	names := []string{"e", "c", "d", "c[]", "e[]", "d[]"}
	oids := make([]uint32, len(names))
	for i, n := range names {
		oids[i] = typeOID(t, ctx, pool, n)
	}
	values := [][]byte{[]byte("a"), []byte(`(b,"{1,2}","{a,NULL}")`), []byte(`(a,,)`),
		[]byte(`{"(b,{1},{b})",NULL}`), []byte(`{a,b}`), []byte(`{"(,,)"}`)}
	want := []string{`"a"`, `{"x": "b", "y": [1, 2], "z": ["a", null]}`, `{"x": "a", "y": null, "z": null}`,
		`[{"x": "b", "y": [1], "z": ["b"]}, null]`, `["a", "b"]`, `[{"x": null, "y": null, "z": null}]`}
	types := pgjson.NewTypeMap()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				k := (g + i) % len(names)
				if i%7 == 0 {
					types.Invalidate()
				}
				cols := []pgjson.Column{{Name: "v", TypeOID: oids[k]}}
				enc, err := types.Encoder(ctx, pool, cols)
				if err != nil {
					errs <- err
					return
				}
				got, err := enc.AppendRow(nil, [][]byte{values[k]})
				if err != nil {
					errs <- err
					return
				}
				if w := `{"v": ` + want[k] + `}`; string(got) != w {
					errs <- fmt.Errorf("%s: got %s, want %s", names[k], got, w)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAppendTupleErrors(t *testing.T) {
	enc, err := pgjson.NewTypeMap().NewEncoder([]pgjson.Column{{Name: "id", TypeOID: 23}, {Name: "doc", TypeOID: 114}})
	if err != nil {
		t.Fatal(err)
	}
	tuple := tupleOf([]byte("1"), nil)
	tuple.Columns[1].DataType = 'u'
	if _, err := enc.AppendTuple(nil, tuple); !errors.Is(err, pgjson.ErrUnchangedToast) || !strings.Contains(err.Error(), `"doc"`) {
		t.Fatalf("unchanged toast: err = %v", err)
	}
	dst := []byte("keep")
	got, err := enc.AppendRow(dst, [][]byte{[]byte("1"), []byte(`{"a":`)})
	if err == nil || string(got) != "keep" || !strings.Contains(err.Error(), `"doc"`) {
		t.Fatalf("bad json: %q, %v", got, err)
	}
	if _, err := enc.AppendRow(nil, [][]byte{[]byte("1")}); err == nil {
		t.Fatal("AppendRow accepts too few values")
	}
}
