package migrations_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Bagger's Perl classes call the configuration functions by argument name
// (PGObject: SELECT * FROM storage.save_config(in_key := ?, in_value := ?)),
// logged in as a role migrations/README.md tells operators to make a member of
// lenkwerk_config. Every configuration function answers such calls, and the
// agent mirrors what they changed.
func TestBaggerToolsCallByName(t *testing.T) {
	ctx := testContext(t)
	src := migrated(t, ctx)
	admin := connect(t, ctx, src)
	role := fmt.Sprintf("bagger_tool_%d", time.Now().UnixNano())
	loginRole(t, ctx, admin, role)
	tool := connect(t, ctx, asUser(t, src, role))
	store := memStore(t, ctx)
	runAgent(t, ctx, src, store)

	called := map[string]bool{}
	// call runs SELECT * FROM storage.fn(args) and returns each row as JSON.
	call := func(fn, args string, params ...any) []map[string]any {
		t.Helper()
		called[fn] = true
		rows, err := tool.Query(ctx, `SELECT to_jsonb(r) FROM storage.`+fn+`(`+args+`) r`, params...)
		if err != nil {
			t.Fatalf("%s(%s): %v", fn, args, err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (map[string]any, error) {
			var v any
			if err := r.Scan(&v); err != nil {
				return nil, err
			}
			if m, ok := v.(map[string]any); ok {
				return m, nil
			}
			return map[string]any{"value": v}, nil
		})
		if err != nil {
			t.Fatalf("%s(%s): %v", fn, args, err)
		}
		return out
	}
	one := func(fn, args string, params ...any) map[string]any {
		t.Helper()
		rows := call(fn, args, params...)
		if len(rows) != 1 {
			t.Fatalf("%s(%s): %d rows, want 1", fn, args, len(rows))
		}
		return rows[0]
	}
	id := func(m map[string]any) int { return int(m["id"].(float64)) }
	expect := func(what string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}

	node := id(one("register_pg_instance", `in_host := $1, in_port := $2, in_username := $3`, "pg1.example", 5432, "schaufel"))
	one("register_pg_instance", `in_username := $1, in_port := $2, in_host := $3`, "schaufel", 5433, "pg1.example")
	one("register_pg_instance", `in_host := $1, in_port := $2, in_username := $3`, "pg2.example", 5432, "schaufel")
	expect("set_pg_instance_status", one("set_pg_instance_status", `in_id := $1, in_status := $2`, node, 3)["status"], 3)
	expect("get_pg_instance_by_id", one("get_pg_instance_by_id", `in_id := $1`, node)["status"], 3)
	expect("get_pg_instance_by_host_and_port", one("get_pg_instance_by_host_and_port", `in_port := $1, in_host := $2`, 5433, "pg1.example")["port"], 5433)
	expect("list_pg_instances", len(call("list_pg_instances", ``)), 3)

	host := id(one("append_dimension", `in_fieldname := $1, in_default_val := $2, in_valid_from := $3, in_valid_until := $4`, "host", nil, nil, nil))
	one("insert_dimension", `in_ordinality := $1, in_fieldname := $2, in_default_val := $3, in_valid_from := $4, in_valid_until := $5`,
		0, "tenant", "none", "2024-01-01", nil)
	expect("expire_dimension", one("expire_dimension", `in_valid_until := $1, in_id := $2`, "2030-01-01", host)["valid_until"], "2030-01-01T00:00:00")
	var order []any
	for _, d := range call("get_dimensions", ``) {
		order = append(order, d["fieldname"])
	}
	expect("get_dimensions", order, []any{"tenant", "host"})

	idx := id(one("save_index", `in_indexname := $1, in_access_method := $2, in_tablespc := $3, in_valid_until := $4, in_valid_from := $5`,
		"bagger_idx", "gin", nil, nil, nil))
	expect("save_index again", one("save_index", `in_valid_from := $1, in_valid_until := $2, in_tablespc := $3, in_access_method := $4, in_indexname := $5`,
		nil, "2040-01-01", nil, "btree", "bagger_idx")["access_method"], "btree")
	expect("get_index", id(one("get_index", `in_indexname := $1`, "bagger_idx")), idx)
	field := id(one("append_index_field", `in_index_id := $1, in_expression := $2, in_valid_from := $3, in_valid_until := $4`, idx, "payload", nil, nil))
	one("insert_index_field", `in_index_id := $1, in_ordinality := $2, in_expression := $3, in_valid_from := $4, in_valid_until := $5`,
		idx, 0, "lower(app)", nil, nil)
	expect("expire_index_field", one("expire_index_field", `in_id := $1, in_valid_until := $2`, field, "2031-01-01")["valid_until"], "2031-01-01T00:00:00")
	var fields []any
	for _, f := range call("get_index_fields", `in_index_id := $1`, idx) {
		fields = append(fields, f["expression"])
	}
	expect("get_index_fields", fields, []any{"lower(app)", "payload"})
	expect("expire_index", one("expire_index", `in_id := $1, in_valid_until := $2`, idx, "2041-01-01")["valid_until"], "2041-01-01T00:00:00")

	one("save_config", `in_key := $1, in_value := $2`, "kvstore_type", `"etcd"`)
	one("save_config", `in_value := $1, in_key := $2`, `{"host": "etcd.example", "port": 2379}`, "kvstore_config")
	expect("get_config", one("get_config", `in_key := $1`, "kvstore_type")["value"], "etcd")

	gen := id(one("save_servermap", `in_server_map := $1`, `{"gen": 1}`))
	newest := id(one("save_servermap", `in_server_map := $1`, `{"gen": 2}`))
	expect("get_servermap", one("get_servermap", `in_id := $1`, gen)["server_map"], map[string]any{"gen": 1.0})
	expect("most_recent_servermap", id(one("most_recent_servermap", ``)), newest)
	expect("servermap_rotate_num", one("servermap_rotate_num", ``)["value"], 2)

	// Every configuration function of Bagger's extension was called
	// (validrange takes a row, enforce_retention and inbound_from_kvstore
	// are storage nodes').
	facts, err := os.ReadFile(filepath.Join("adopt", "bagger_lw_storage--0.0.1.facts"))
	if err != nil {
		t.Fatal(err)
	}
	var bagger []string
	for _, m := range regexp.MustCompile(`(?m)^function storage\.(\w+)\(`).FindAllStringSubmatch(string(facts), -1) {
		if !slices.Contains([]string{"validrange", "enforce_retention", "inbound_from_kvstore"}, m[1]) {
			bagger = append(bagger, m[1])
		}
	}
	var got []string
	for fn := range called {
		got = append(got, fn)
	}
	slices.Sort(got)
	slices.Sort(bagger)
	if !slices.Equal(got, bagger) || len(bagger) != 22 {
		t.Fatalf("called %q, Bagger's configuration functions are %q", got, bagger)
	}

	waitMirrored(t, ctx, src, store)
	for key, want := range map[string]map[string]any{
		"/PostgresInstance/pg1.example/5432":    {"status": 3.0, "username": "schaufel"},
		"/PostgresInstance/pg1.example/5433":    {"status": 0.0},
		fmt.Sprintf("/Dimension/%d", host):      {"fieldname": "host", "ordinality": 1.0, "valid_until": "2030-01-01T00:00:00"},
		fmt.Sprintf("/Index/%d", idx):           {"access_method": "btree", "valid_until": "2041-01-01T00:00:00"},
		fmt.Sprintf("/Index/%d/%d", idx, field): {"expression": "payload", "ordinality": 1.0, "valid_until": "2031-01-01T00:00:00"},
		"/Config/kvstore_config":                {"value": map[string]any{"host": "etcd.example", "port": 2379.0}},
		"/Servermap":                            {"id": float64(newest), "server_map": map[string]any{"gen": 2.0}},
	} {
		kv, err := store.Get(ctx, key)
		if err != nil {
			t.Fatalf("store key %s: %v", key, err)
		}
		var row map[string]any
		if err := json.Unmarshal(kv.Value, &row); err != nil {
			t.Fatalf("store key %s: %v", key, err)
		}
		for k, v := range want {
			expect(key+" "+k, row[k], v)
		}
	}
}
