package containers_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Scenario 1: the deployment of the README in containers — migrate job,
// agent up, Bagger configured through its SQL functions; every key and
// value in etcd is to_jsonb of its row.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, 1)
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.register_pg_instance('db2', 5432, 'bagger')`)
	s.exec(ctx, `SELECT storage.save_config('kvstore_type', '"etcd"'), storage.save_config('kvstore_config', '{"host": "etcd0", "port": 2379}')`)
	s.startAgent()
	s.converge(ctx, 60*time.Second) // the initial sync

	for _, sql := range []string{
		`SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db1'), 3)`,
		`SELECT storage.register_pg_instance('rack/7', 6432, 'schaufel')`,
		`SELECT storage.save_servermap('{"nodes": [1]}')`,
		`SELECT storage.append_dimension('day', NULL, NULL, NULL), storage.append_dimension('customer', 'unknown', NULL, NULL)`,
		`SELECT storage.insert_dimension(0, 'region', NULL, '2020-01-01', NULL)`,
		`SELECT storage.expire_dimension((SELECT id FROM storage.dimension WHERE fieldname = 'customer'), '2030-01-01 00:00:00.123456')`,
		`SELECT storage.save_index('bagger_idx', 'gin', NULL, NULL, NULL)`,
		`SELECT storage.append_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 'payload', NULL, NULL)`,
		`SELECT storage.insert_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 0, 'ts', NULL, NULL)`,
		`SELECT storage.expire_index_field((SELECT id FROM storage.index_field WHERE expression = 'payload'), '2031-02-03')`,
		`SELECT storage.save_index('bagger_idx', 'btree', NULL, '2040-01-01', NULL)`,
		`SELECT storage.save_servermap('{"nodes": [1, 2]}')`,
		`SELECT storage.save_config('retention', '"30d"')`,
		`DELETE FROM storage.config WHERE key = 'kvstore_type'`,
	} {
		s.exec(ctx, sql)
	}
	s.converge(ctx, 30*time.Second)
	store := s.Store()
	for key, want := range map[string]string{
		"/PostgresInstance/rack%2F7/6432": `"host": "rack/7"`,
		"/PostgresInstance/db1/5432":      `"status": 3`,
		"/Servermap":                      `"server_map": {"nodes": [1, 2]}`,
		"/Config/retention":               `"value": "30d"`,
	} {
		kv, err := store.Get(ctx, key)
		if err != nil || !strings.Contains(string(kv.Value), want) {
			t.Errorf("%s = %s, %v; want a value containing %s", key, kv.Value, err, want)
		}
	}
	s.agentRunning(ctx)
}
