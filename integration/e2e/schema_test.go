package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/harness"
)

// TestSchemaChanges changes the published tables under a running agent
// (with --prefix): columns added, retyped and dropped, and a table added
// to the publication with rows already in it. Only one row is changed after
// each DDL (pgoutput announces a new relation shape with the next change of
// the table): the untouched rows' to_jsonb changed too, and the store must
// follow.
func TestSchemaChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd, harness.WithPrefix("/bagger"))
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.register_pg_instance('db2', 5432, 'bagger');
		SELECT storage.save_config('a', '{"x": 1}'), storage.save_config('b', '[1, 2]')`)
	s.agent.Start()
	s.converge(ctx, 60*time.Second)

	for _, st := range []configStep{
		{"add columns", `ALTER TABLE storage.config ADD COLUMN note text DEFAULT 'none';
			INSERT INTO storage.config (key, value) VALUES ('c', '"new"');
			ALTER TABLE storage.postgres_instance ADD COLUMN seen timestamptz[] DEFAULT ARRAY['2024-05-06 07:08:09.123+02'::timestamptz, 'infinity'];
			UPDATE storage.postgres_instance SET username = username || '_x' WHERE host = 'db1'`},
		{"retype a column", `ALTER TABLE storage.postgres_instance ALTER COLUMN seen DROP DEFAULT, ALTER COLUMN seen TYPE numeric[] USING ARRAY[1.50, 'NaN', -0.0];
			UPDATE storage.postgres_instance SET status = 1 WHERE host = 'db2'`},
		{"drop a column", `ALTER TABLE storage.config DROP COLUMN note;
			UPDATE storage.config SET value = '{"x": 2}' WHERE key = 'a'`},
		{"a table added to the publication, rows included", `CREATE TABLE storage.extra (a int, b text, c timestamptz DEFAULT '2001-02-03 04:05:06+07', PRIMARY KEY (b, a));
			GRANT SELECT ON storage.extra TO lenkwerk_agent;
			INSERT INTO storage.extra (a, b) VALUES (1, 'x'), (2, 'y/z');
			ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.extra`},
		{"changes to the added table", `INSERT INTO storage.extra (a, b) VALUES (3, 'w');
			DELETE FROM storage.extra WHERE a = 1;
			UPDATE storage.extra SET b = 'moved' WHERE a = 2`},
	} {
		start := time.Now()
		s.exec(ctx, st.sql)
		if _, err := s.tryConverge(ctx, 45*time.Second); err != nil {
			t.Fatalf("after %q: %v", st.what, err)
		}
		t.Logf("%s: converged in %v", st.what, time.Since(start).Round(time.Millisecond))
	}
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
	if u := s.agent.Unexpected(); len(u) > 0 {
		t.Errorf("the agent exited without being asked to:\n%v", u)
	}
}
