package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/status"
	"github.com/bagger/lenkwerk/kvdriver"
)

const statusSynopsis = `status --database-url URL [--kv URL] [--slot lw_agent] [--prefix ""] [--warn-retained 1GB] [--warn-lag 30s] [--json]

Shows the agent's replication slot (exists, active, pid, LSNs, WAL retained,
wal_status, safe_wal_size), the store's checkpoint and the lag between them.
Any role that may log in can run it (lenkwerk_agent will do).

Exit status: 0 all is well; 1 error (database or store unreachable, bad
flags); 2 a warning (slot missing or lost, more WAL retained than
--warn-retained, no checkpoint in the store, the store further behind than
--warn-lag: a stalled, blocked or slow agent), printed as "WARNING: …"
lines (or in "warnings" with --json).`

// exitWarning is the exit status of lenkwerk status when it warns.
const exitWarning = 2

func init() {
	register("status", "show the replication slot, the store's checkpoint and the lag", func(ctx context.Context, args []string) error {
		ok, err := runStatus(ctx, args, os.Stdout)
		if err == nil && !ok {
			os.Exit(exitWarning)
		}
		return err
	})
}

// runStatus prints the status report; ok is false when it has warnings.
func runStatus(ctx context.Context, args []string, stdout io.Writer) (ok bool, err error) {
	fs := newFlagSet("status", statusSynopsis)
	databaseURL := fs.String("database-url", envOr("LENKWERK_DATABASE_URL", ""), "Lenkwerk database `URL` (env LENKWERK_DATABASE_URL)")
	kvURL := fs.String("kv", envOr("LENKWERK_KV_URL", ""), "key-value store `URL` (env LENKWERK_KV_URL; default: from storage.config kvstore_type/kvstore_config)")
	slot := fs.String("slot", envOr("LENKWERK_SLOT", agent.DefaultSlot), "logical replication slot (env LENKWERK_SLOT)")
	prefix := fs.String("prefix", envOr("LENKWERK_PREFIX", ""), "the agent's key `prefix` (env LENKWERK_PREFIX)")
	warnRetained := fs.String("warn-retained", "1GB", "warn when the slot retains more WAL than this `size` (bytes, or kB/MB/GB/TB, powers of 1024)")
	warnLag := fs.Duration("warn-lag", status.DefaultWarnLag, "warn when the store is further behind the database than this `duration`")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := fs.Parse(args); err != nil {
		return false, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return false, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	warn, err := status.ParseBytes(*warnRetained)
	if err != nil {
		return false, fmt.Errorf("--warn-retained: %w", err)
	}
	if warn == 0 {
		return false, errors.New("--warn-retained: must be positive")
	}
	if *warnLag <= 0 {
		return false, errors.New("--warn-lag: must be positive")
	}
	if *databaseURL == "" {
		fs.Usage()
		return false, fmt.Errorf("%w: --database-url is required", errUsage)
	}
	if *kvURL == "" {
		u, err := kvURLFromDatabase(ctx, *databaseURL, sourceSettings)
		if err != nil {
			return false, fmt.Errorf("no --kv given and %w", err)
		}
		*kvURL = u
	}
	store, err := kvdriver.Open(ctx, *kvURL)
	if err != nil {
		return false, err
	}
	defer store.Close()
	r, err := status.Read(ctx, status.Options{
		DatabaseURL:  *databaseURL,
		Store:        store,
		Slot:         *slot,
		Prefix:       *prefix,
		WarnRetained: warn,
		WarnLag:      *warnLag,
	})
	if err != nil {
		return false, err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(r)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		return false, fmt.Errorf("write status: %w", err)
	}
	return r.OK(), nil
}
