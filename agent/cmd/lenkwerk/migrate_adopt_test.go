package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/bagger/lenkwerk/migrations/baggertest"
)

// migrate adopt takes Bagger's extension over and says what it did; up
// points at it.
func TestMigrateAdopt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := baggertest.StartCluster(t, pgtest.Options{})
	url := c.NewDatabase(t)
	baggertest.Install(t, ctx, url)
	t.Setenv("LENKWERK_DATABASE_URL", url)

	_, _, err := migrateRun(ctx, "", "up")
	if !errors.Is(err, migrations.ErrBaggerInstalled) || !strings.Contains(err.Error(), "'lenkwerk migrate adopt'") {
		t.Fatalf("up on Bagger's database: %v", err)
	}
	if _, errOut, err := migrateRun(ctx, "", "adopt", "now"); !errors.Is(err, errUsage) || !strings.Contains(errOut, "adopt takes no arguments") {
		t.Fatalf("adopt now: %v\n%s", err, errOut)
	}
	latest := migrations.Versions()[len(migrations.Versions())-1]
	out, errOut, err := migrateRun(ctx, "", "adopt")
	if err != nil {
		t.Fatalf("adopt: %v\n%s", err, errOut)
	}
	for _, want := range []string{"applied 3/u storage_schema (adoption)\n",
		"adopted bagger_lw_storage 0.0.1 in one transaction, every row kept (postgres_instance 3, servermap 2, dimension 3, index 1, index_field 2, config 4)\n",
		"applied 7/u replication_slot\n", fmt.Sprintf("version %d (latest)\n", latest)} {
		if !strings.Contains(out, want) {
			t.Errorf("adopt printed\n%s\nwant %q", out, want)
		}
	}
	// Run again, it finds the adoption done.
	if out, errOut, err := migrateRun(ctx, "", "adopt"); err != nil || !strings.Contains(out, "adopted bagger_lw_storage 0.0.1 before") {
		t.Fatalf("adopt again: %v\n%s%s", err, out, errOut)
	}
}
