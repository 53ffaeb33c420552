package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

func init() {
	register("agent", "mirror the Lenkwerk database into the key-value store", runAgent)
}

// agentFlags are the flags agent and resync share.
type agentFlags struct {
	databaseURL, kvURL, slot, publication, prefix, templates string
	logLevel                                                 string
	// retryOpen keeps trying to open an unreachable store (the agent
	// must outlive store outages, also at its start).
	retryOpen bool
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.databaseURL, "database-url", envOr("LENKWERK_DATABASE_URL", ""), "Lenkwerk database `URL` (env LENKWERK_DATABASE_URL)")
	fs.StringVar(&f.kvURL, "kv", envOr("LENKWERK_KV_URL", ""), "key-value store `URL`: etcd://host:port, postgres://…, mem://name (env LENKWERK_KV_URL; default: from storage.config kvstore_type/kvstore_config)")
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
	if f.databaseURL == "" {
		fs.Usage()
		return agent.Config{}, nil, fmt.Errorf("%w: --database-url is required", errUsage)
	}
	if f.kvURL == "" {
		// Bagger keeps its store settings in Lenkwerk itself.
		u, err := kvURLFromDatabase(ctx, f.databaseURL)
		if err != nil {
			return agent.Config{}, nil, fmt.Errorf("no --kv given and %w", err)
		}
		slog.Info("key-value store from storage.config (kvstore_type, kvstore_config)", "kv", kvdriver.Redact(u))
		f.kvURL = u
	}
	tmpl, err := keymap.ParseTemplates(f.templates)
	if err != nil {
		return agent.Config{}, nil, err
	}
	store, err := openStore(ctx, f.kvURL, f.retryOpen)
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

// kvURLFromDatabase builds the store URL from Bagger's storage.config rows
// kvstore_type (e.g. "etcd") and kvstore_config (e.g. {"host": …, "port": …}).
func kvURLFromDatabase(ctx context.Context, databaseURL string) (string, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return "", fmt.Errorf("cannot read storage.config: %w", err)
	}
	defer conn.Close(context.Background())
	var typ, cfg []byte
	err = conn.QueryRow(ctx, `SELECT (SELECT value::text FROM storage.config WHERE key = 'kvstore_type'), (SELECT value::text FROM storage.config WHERE key = 'kvstore_config')`).Scan(&typ, &cfg)
	if err != nil {
		return "", fmt.Errorf("cannot read storage.config: %w", err)
	}
	return kvURLFromSettings(typ, cfg)
}

// kvURLFromSettings turns the kvstore_type and kvstore_config values (JSON)
// into a store URL.
func kvURLFromSettings(typ, cfg []byte) (string, error) {
	if typ == nil {
		return "", errors.New("storage.config has no kvstore_type row")
	}
	var t string
	if err := json.Unmarshal(typ, &t); err != nil {
		return "", fmt.Errorf("storage.config kvstore_type is not a JSON string: %w", err)
	}
	if t != "etcd" {
		return "", fmt.Errorf("storage.config kvstore_type %q: only etcd can be derived; give --kv", t)
	}
	var c struct {
		Host string          `json:"host"`
		Port json.RawMessage `json:"port"`
	}
	if cfg != nil {
		if err := json.Unmarshal(cfg, &c); err != nil {
			return "", fmt.Errorf("storage.config kvstore_config: %w", err)
		}
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	port := strings.Trim(string(c.Port), `"`)
	if port == "" {
		port = "2379"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("storage.config kvstore_config: bad port %s", c.Port)
	}
	return "etcd://" + net.JoinHostPort(c.Host, port), nil
}

// openStore opens the store; with retry, an unreachable store is retried
// with capped backoff until ctx is done (then the error is ctx's), while a
// bad URL fails at once.
func openStore(ctx context.Context, rawURL string, retry bool) (kvdriver.Store, error) {
	wait := 250 * time.Millisecond
	for {
		store, err := kvdriver.Open(ctx, rawURL)
		if err == nil || !retry || errors.Is(err, kvdriver.ErrInvalidURL) || errors.Is(err, kvdriver.ErrUnsupportedScheme) {
			return store, err
		}
		slog.Warn("cannot open the key-value store; retrying", "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func runAgent(ctx context.Context, args []string) error {
	fs := newFlagSet("agent", "agent --database-url URL --kv URL [--slot lw_agent] [--publication bagger_lw_storage] [--prefix \"\"] [--key-template schema.table=/Tmpl/{col},...]")
	f := agentFlags{retryOpen: true}
	f.register(fs)
	statusInterval := fs.Duration("status-interval", agent.DefaultStatusInterval, "longest time between standby status updates (keep below wal_sender_timeout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, store, err := f.open(ctx, fs)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the store
		}
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
