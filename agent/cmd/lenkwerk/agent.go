package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
)

func init() {
	register("agent", "mirror the Lenkwerk database into the key-value store", runAgent)
}

// agentFlags are the flags agent and resync share.
type agentFlags struct {
	databaseURL, kvURL, slot, publication, prefix, templates string
	logLevel                                                 string
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.databaseURL, "database-url", envOr("LENKWERK_DATABASE_URL", ""), "Lenkwerk database `URL` (env LENKWERK_DATABASE_URL)")
	fs.StringVar(&f.kvURL, "kv", envOr("LENKWERK_KV_URL", ""), "key-value store `URL`: etcd://host:port, postgres://…, mem://name (env LENKWERK_KV_URL)")
	fs.StringVar(&f.slot, "slot", envOr("LENKWERK_SLOT", agent.DefaultSlot), "logical replication slot (env LENKWERK_SLOT)")
	fs.StringVar(&f.publication, "publication", envOr("LENKWERK_PUBLICATION", agent.DefaultPublication), "publication to mirror (env LENKWERK_PUBLICATION)")
	fs.StringVar(&f.prefix, "prefix", envOr("LENKWERK_PREFIX", ""), "key `prefix` put before every key, e.g. /bagger (env LENKWERK_PREFIX)")
	fs.StringVar(&f.templates, "key-template", envOr("LENKWERK_KEY_TEMPLATES", ""), "key templates overriding the defaults: `schema.table=/Key/{col},...` (env LENKWERK_KEY_TEMPLATES)")
	fs.StringVar(&f.logLevel, "log-level", envOr("LENKWERK_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env LENKWERK_LOG_LEVEL)")
}

// open checks the flags, sets the log level and opens the store.
func (f *agentFlags) open(ctx context.Context, fs *flag.FlagSet) (agent.Config, kvdriver.Store, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return agent.Config{}, nil, fmt.Errorf("-log-level: %w", err)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
	if f.databaseURL == "" || f.kvURL == "" {
		fs.Usage()
		return agent.Config{}, nil, fmt.Errorf("%w: --database-url and --kv are required", errUsage)
	}
	tmpl, err := keymap.ParseTemplates(f.templates)
	if err != nil {
		return agent.Config{}, nil, err
	}
	store, err := kvdriver.Open(ctx, f.kvURL)
	if err != nil {
		return agent.Config{}, nil, err
	}
	return agent.Config{
		DatabaseURL: f.databaseURL,
		Store:       store,
		Slot:        f.slot,
		Publication: f.publication,
		Prefix:      f.prefix,
		Templates:   tmpl,
		Logger:      slog.Default(),
	}, store, nil
}

func runAgent(ctx context.Context, args []string) error {
	fs := newFlagSet("agent", "agent --database-url URL --kv URL [--slot lw_agent] [--publication bagger_lw_storage] [--prefix \"\"] [--key-template schema.table=/Tmpl/{col},...]")
	var f agentFlags
	f.register(fs)
	statusInterval := fs.Duration("status-interval", agent.DefaultStatusInterval, "longest time between standby status updates (keep below wal_sender_timeout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, store, err := f.open(ctx, fs)
	if err != nil {
		return err
	}
	defer store.Close()
	cfg.StatusInterval = *statusInterval
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	slog.Info("lenkwerk agent starting", "kv", kvdriver.Redact(f.kvURL), "slot", cfg.Slot, "publication", cfg.Publication, "prefix", cfg.Prefix)
	start := time.Now()
	err = a.Run(ctx)
	slog.Info("lenkwerk agent stopped", "uptime", time.Since(start).Round(time.Second), "checkpoint", a.Status().Checkpoint)
	return err
}
