package main

import (
	"context"
	"log/slog"

	"github.com/bagger/lenkwerk/agent"
)

func init() {
	register("resync", "copy every published table into the store again from a fresh snapshot", runResync)
}

func runResync(ctx context.Context, args []string) error {
	fs := newFlagSet("resync", "resync --database-url URL --kv URL [--slot lw_agent] [--publication bagger_lw_storage] [--prefix \"\"] [--key-template ...]\n\n"+
		"Recreates the replication slot with an exported snapshot, copies every\n"+
		"published table, deletes keys that match no row and writes a new\n"+
		"checkpoint. Stop the agent first (the slot must not be in use); start it\n"+
		"again afterwards and it streams from the new checkpoint.")
	var f agentFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, store, err := f.open(ctx, fs)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := agent.Resync(ctx, cfg); err != nil {
		return err
	}
	slog.Info("resync done")
	return nil
}
