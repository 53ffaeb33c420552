package pgjson_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
)

// pgoutput leaves out generated columns, which to_jsonb has: CheckColumns
// says so by name instead of letting a different value through.
func TestGeneratedColumnsAreReported(t *testing.T) {
	ctx := context.Background()
	url, ref := newDatabase(t, ctx, map[string]string{"TimeZone": "UTC"}, `CREATE TABLE g (id int PRIMARY KEY, twice int GENERATED ALWAYS AS (id * 2) STORED);
		CREATE TABLE plain (id int PRIMARY KEY, v text);
		CREATE PUBLICATION p FOR TABLE g, plain`)
	repl := replConn(t, ctx, url, pgjson.SessionSettings(), "s")
	if _, err := ref.Exec(ctx, `INSERT INTO g (id) VALUES (1); INSERT INTO plain VALUES (1, 'x')`); err != nil {
		t.Fatal(err)
	}
	changes := stream(t, ctx, repl, "s", "p", 2)
	types := pgjson.NewTypeMap()
	for _, ch := range changes {
		cols := pgjson.ColumnsOf(ch.rel)
		err := pgjson.CheckColumns(ctx, ref, ch.rel.RelationID, cols)
		enc, encErr := types.Encoder(ctx, ref, cols)
		if encErr != nil {
			t.Fatal(encErr)
		}
		got, encErr := enc.AppendTuple(nil, ch.tuple)
		if encErr != nil {
			t.Fatal(encErr)
		}
		var want string
		if err := ref.QueryRow(ctx, "SELECT to_jsonb(t)::text FROM "+ch.rel.RelationName+" t").Scan(&want); err != nil {
			t.Fatal(err)
		}
		switch ch.rel.RelationName {
		case "g":
			if !errors.Is(err, pgjson.ErrGeneratedColumn) || !strings.Contains(err.Error(), `"twice"`) || !strings.Contains(err.Error(), "g") {
				t.Fatalf("CheckColumns(g) = %v, want ErrGeneratedColumn naming twice", err)
			}
			if string(got) == want {
				t.Fatalf("pgoutput sent the generated column (%s): update CheckColumns' doc", got)
			}
		case "plain":
			if err != nil {
				t.Fatalf("CheckColumns(plain) = %v", err)
			}
			if string(got) != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		}
	}
}
