package secure

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestRecommendedHBA checks README.md's pg_hba.conf (startPG runs it as
// written): lenkwerk_agent, with its valid certificate, gets no physical
// replication (pg_basebackup, which copies the whole cluster, nor a
// physical replication connection) and no connection to another database;
// its logical replication connection to the Lenkwerk database works
// (TestAgentTLSBothSides streams through it).
//
// It also shows what the REPLICATION attribute allows whatever the grants
// say, which is why the Lenkwerk database must be a database of its own:
// in the database the agent may connect to, it decodes a table it has no
// SELECT on through another output plugin, and drops a slot it did not
// create.
func TestRecommendedHBA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := newPKI(t)
	pg := startPG(t, p)
	agentURL := pg.url(agentRole, p.agent)

	t.Run("no physical replication", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, agentURL+"&replication=true")
		if err == nil {
			_, idErr := pglogrepl.IdentifySystem(ctx, conn)
			conn.Close(ctx)
			t.Fatalf("physical replication connection as %s accepted (IDENTIFY_SYSTEM: %v)", agentRole, idErr)
		}
		if !strings.Contains(err.Error(), "pg_hba.conf rejects replication connection") {
			t.Errorf("physical replication refused with %v, want pg_hba's rejection", err)
		}

		dir := filepath.Join(t.TempDir(), "backup")
		cmd := exec.CommandContext(ctx, filepath.Join(pg.c.BinDir(), "pg_basebackup"), "-d", agentURL, "-D", dir, "-X", "none", "--no-sync")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("pg_basebackup as %s copied the cluster:\n%s", agentRole, out)
		}
		if !strings.Contains(string(out), "pg_hba.conf rejects replication connection") {
			t.Errorf("pg_basebackup failed with %v, want pg_hba's rejection:\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
			t.Error("pg_basebackup left a copy of the cluster")
		}
	})

	t.Run("logical replication to the Lenkwerk database only", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, agentURL+"&replication=database")
		if err != nil {
			t.Fatalf("logical replication connection refused: %v", err)
		}
		defer conn.Close(ctx)
		if _, err := pglogrepl.IdentifySystem(ctx, conn); err != nil {
			t.Fatalf("IDENTIFY_SYSTEM: %v", err)
		}
		for _, extra := range []string{"", "&replication=database"} {
			c, err := pgconn.Connect(ctx, pg.urlFor("postgres", agentRole, p.agent)+extra)
			if err == nil {
				c.Close(ctx)
				t.Errorf("connection of %s to database postgres (%q) accepted", agentRole, extra)
			} else if !strings.Contains(err.Error(), "pg_hba.conf rejects connection") {
				t.Errorf("connection to database postgres (%q) refused with %v, want pg_hba's rejection", extra, err)
			}
		}
	})

	t.Run("what REPLICATION allows whatever the grants", func(t *testing.T) {
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(context.Background())
		agent, err := pgx.Connect(ctx, agentURL)
		if err != nil {
			t.Fatal(err)
		}
		defer agent.Close(context.Background())
		for _, sql := range []string{
			`CREATE TABLE public.not_for_the_agent (secret text)`,
			`SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')`,
		} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if _, err := agent.Exec(ctx, `SELECT * FROM public.not_for_the_agent`); !isInsufficientPrivilege(err) {
			t.Fatalf("agent reads the table: %v, want permission denied", err)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_create_logical_replication_slot('agent_peeks', 'test_decoding')`); err != nil {
			t.Fatalf("agent creates a test_decoding slot: %v", err)
		}
		if _, err := admin.Exec(ctx, `INSERT INTO public.not_for_the_agent VALUES ('s3cret')`); err != nil {
			t.Fatal(err)
		}
		// The test server commits asynchronously: the decoding shows the
		// row once the WAL writer has flushed it.
		var changes string
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(changes, "s3cret"); {
			var more string
			if err := agent.QueryRow(ctx, `SELECT coalesce(string_agg(data, E'\n'), '') FROM pg_logical_slot_get_changes('agent_peeks', NULL, NULL)`).Scan(&more); err != nil {
				t.Fatalf("agent decodes: %v", err)
			}
			changes += more
			if time.Now().After(deadline) {
				t.Fatalf("the agent's decoding lacks the row after 20s: %q", changes)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_drop_replication_slot('someone_elses')`); err != nil {
			t.Errorf("agent drops another consumer's slot: %v", err)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_drop_replication_slot('agent_peeks')`); err != nil {
			t.Fatal(err)
		}
	})
}
