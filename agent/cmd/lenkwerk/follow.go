package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
)

func init() {
	register("follow", "keep a local PostgreSQL copy of Lenkwerk equal to the key-value store (storage nodes)", runFollow)
}

func runFollow(ctx context.Context, args []string) error {
	fs := newFlagSet("follow", "follow --database-url LOCAL_URL --kv URL [--prefix \"\"] [--key-template schema.table=/Tmpl/{col},...] [--migrate=true]")
	databaseURL := fs.String("database-url", envOr("LENKWERK_FOLLOW_DATABASE_URL", ""), "local copy's database `URL` (env LENKWERK_FOLLOW_DATABASE_URL); never the Lenkwerk database of record")
	kvURL := fs.String("kv", envOr("LENKWERK_KV_URL", ""), "key-value store `URL`: etcd://host:port, postgres://…, mem://name (env LENKWERK_KV_URL; default: etcd://host:port from the local copy's storage.config kvstore_type/kvstore_config, host and port only: credentials and files come only from --kv)")
	prefix := fs.String("prefix", envOr("LENKWERK_PREFIX", ""), "key `prefix` the agent writes under, e.g. /bagger (env LENKWERK_PREFIX)")
	templates := fs.String("key-template", envOr("LENKWERK_KEY_TEMPLATES", ""), "the agent's key templates: `schema.table=/Key/{col},...` (env LENKWERK_KEY_TEMPLATES)")
	migrate := fs.Bool("migrate", true, "provision or upgrade the local copy at start (lenkwerk migrations as a copy: no publication, no slot; needs a superuser)")
	logLevel := fs.String("log-level", envOr("LENKWERK_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env LENKWERK_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
	if *databaseURL == "" || fs.NArg() > 0 {
		fmt.Fprintln(fs.Output(), "lenkwerk follow: --database-url (or LENKWERK_FOLLOW_DATABASE_URL) is required, and no arguments")
		fs.Usage()
		return fmt.Errorf("%w: --database-url is required and there are no arguments", errUsage)
	}
	tmpl, err := keymap.ParseTemplates(*templates)
	if err != nil {
		return err
	}
	if *kvURL == "" {
		// Once loaded, the copy holds Bagger's store settings too.
		u, err := kvURLFromDatabase(ctx, *databaseURL, copySettings)
		if err != nil {
			return fmt.Errorf("no --kv given and %w", err)
		}
		slog.Info("key-value store from the local copy's storage.config (kvstore_type, kvstore_config)", "kv", kvdriver.Redact(u))
		*kvURL = u
	}
	store, err := kvdriver.Open(ctx, *kvURL)
	if err != nil {
		return err
	}
	defer store.Close()
	f, err := follow.New(follow.Config{
		DatabaseURL: *databaseURL,
		Store:       store,
		StoreName:   kvdriver.Redact(*kvURL),
		Prefix:      *prefix,
		Templates:   tmpl,
		Migrate:     *migrate,
		Logger:      slog.Default(),
	})
	if err != nil {
		return err
	}
	slog.Info("lenkwerk follow starting", "kv", kvdriver.Redact(*kvURL), "database", kvdriver.Redact(*databaseURL), "prefix", *prefix)
	err = f.Run(ctx)
	slog.Info("lenkwerk follow stopped", "revision", f.Status().Revision, "skipped", f.Status().Skipped)
	return err
}
