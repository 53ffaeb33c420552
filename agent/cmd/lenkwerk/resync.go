package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/bagger/lenkwerk/agent"
)

func init() {
	register("resync", "copy every published table into the store again from a fresh snapshot", runResync)
}

func runResync(ctx context.Context, args []string) error {
	fs := newFlagSet("resync", "resync --database-url URL --kv URL [--kv NAME=URL ...] [--slot lw_agent] [--publication bagger_lw_storage] [--prefix \"\"] [--key-template ...]\n\n"+
		"Recreates the replication slot with an exported snapshot, copies every\n"+
		"published table, deletes keys that match no row and writes a new\n"+
		"checkpoint. Stop the agent first (the slot must not be in use); start it\n"+
		"again afterwards and it streams from the new checkpoint. With several\n"+
		"--kv (as the agent's), every store is copied again, each on its own slot.")
	var f agentFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfgs, specs, err := f.configs(ctx, fs)
	if err != nil {
		return err
	}
	for i, cfg := range cfgs {
		if err := resyncStore(ctx, cfg, specs[i]); err != nil {
			return err
		}
	}
	return nil
}

func resyncStore(ctx context.Context, cfg agent.Config, sp storeSpec) error {
	store, err := openStore(ctx, sp.url, false)
	if err != nil {
		return fmt.Errorf("store %s: %w", sp.name, err)
	}
	defer store.Close()
	cfg.Store = store
	if err := agent.Resync(ctx, cfg); err != nil {
		return fmt.Errorf("store %s: %w", sp.name, err)
	}
	slog.Info("resync done", "store", sp.name, "slot", cfg.Slot)
	return nil
}
