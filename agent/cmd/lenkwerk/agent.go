package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func init() {
	register("agent", "mirror the Lenkwerk database into the key-value store", runAgent)
}

// agentFlags are the flags agent and resync share.
type agentFlags struct {
	databaseURL, slot, publication, prefix, templates string
	logLevel, logFormat                               string
	// kvURLs are the --kv flags in order (each URL or NAME=URL); empty:
	// LENKWERK_KV_URL, else storage.config.
	kvURLs []string
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.databaseURL, "database-url", envOr("LENKWERK_DATABASE_URL", ""), "Lenkwerk database `URL` (env LENKWERK_DATABASE_URL)")
	fs.Func("kv", "key-value store `URL`: etcd://host:port, postgres://…, mem://name (env LENKWERK_KV_URL; default: etcd://host:port from storage.config kvstore_type/kvstore_config, host and port only). Repeat to fan out: each further store, NAME=URL or named by its position (2, 3, …), streams its own slot <slot>_NAME, created on first start", func(v string) error {
		f.kvURLs = append(f.kvURLs, v)
		return nil
	})
	fs.StringVar(&f.slot, "slot", envOr("LENKWERK_SLOT", agent.DefaultSlot), "logical replication slot (env LENKWERK_SLOT)")
	fs.StringVar(&f.publication, "publication", envOr("LENKWERK_PUBLICATION", agent.DefaultPublication), "publication to mirror (env LENKWERK_PUBLICATION)")
	fs.StringVar(&f.prefix, "prefix", envOr("LENKWERK_PREFIX", ""), "key `prefix` put before every key, e.g. /bagger (env LENKWERK_PREFIX)")
	fs.StringVar(&f.templates, "key-template", envOr("LENKWERK_KEY_TEMPLATES", ""), "key templates overriding the defaults: `schema.table=/Key/{col},...` (env LENKWERK_KEY_TEMPLATES)")
	fs.StringVar(&f.logLevel, "log-level", envOr("LENKWERK_LOG_LEVEL", "info"), "log level: debug (a line per transaction), info, warn, error (env LENKWERK_LOG_LEVEL)")
	fs.StringVar(&f.logFormat, "log-format", envOr("LENKWERK_LOG_FORMAT", "text"), "log format: text or json (env LENKWERK_LOG_FORMAT)")
}

// storeSpec is one store of the agent and the slot it streams.
type storeSpec struct {
	name, url, slot string
}

var storeName = regexp.MustCompile(`^[a-z0-9_]{1,30}$`)

// namedURL matches "NAME=URL"; a URL's scheme ends at ':' before any '='.
var namedURL = regexp.MustCompile(`^([a-z0-9_]+)=(.+)$`)

// parseStores turns the --kv values into stores: the first streams slot
// (named "default" unless NAME= says otherwise), each further one the slot
// agent.StoreSlot(slot, NAME), NAME being given or its position (2, 3, …).
func parseStores(values []string, slot string) ([]storeSpec, error) {
	var out []storeSpec
	seen := map[string]bool{}
	for i, v := range values {
		sp := storeSpec{url: v}
		if m := namedURL.FindStringSubmatch(v); m != nil {
			sp.name, sp.url = m[1], m[2]
		}
		if sp.name == "" {
			sp.name = strconv.Itoa(i + 1)
			if i == 0 {
				sp.name = "default"
			}
		}
		if !storeName.MatchString(sp.name) {
			return nil, fmt.Errorf("--kv %s: store name %q: want 1-30 of a-z, 0-9, _", kvdriver.Redact(v), sp.name)
		}
		if seen[sp.name] {
			return nil, fmt.Errorf("--kv: store name %q given twice", sp.name)
		}
		seen[sp.name] = true
		sp.slot = slot
		if i > 0 {
			sp.slot = agent.StoreSlot(slot, sp.name)
		}
		out = append(out, sp)
	}
	return out, nil
}

// setLogger makes the flags' logger the default one.
func (f *agentFlags) setLogger(w io.Writer) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch f.logFormat {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(w, opts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(w, opts)))
	default:
		return fmt.Errorf("-log-format %q: want text or json", f.logFormat)
	}
	return nil
}

// configs checks the flags, sets the logger and returns one agent
// configuration per store, without a store yet (see openStore).
func (f *agentFlags) configs(ctx context.Context, fs *flag.FlagSet) ([]agent.Config, []storeSpec, error) {
	if err := f.setLogger(os.Stderr); err != nil {
		return nil, nil, err
	}
	if f.databaseURL == "" {
		fs.Usage()
		return nil, nil, fmt.Errorf("%w: --database-url is required", errUsage)
	}
	// Permanent configuration errors end the command here, before any
	// connection; the agent would retry them for ever.
	tmpl, err := keymap.ParseTemplates(f.templates)
	if err != nil {
		return nil, nil, err
	}
	m, err := keymap.New(f.prefix, tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("--prefix or --key-template: %w", err)
	}
	if len(f.kvURLs) == 0 {
		if u := envOr("LENKWERK_KV_URL", ""); u != "" {
			f.kvURLs = []string{u}
		} else {
			// Bagger keeps its store settings in Lenkwerk itself.
			u, err := kvURLFromDatabase(ctx, f.databaseURL, sourceSettings)
			if err != nil {
				return nil, nil, fmt.Errorf("no --kv given and %w", err)
			}
			slog.Info("key-value store from storage.config (kvstore_type, kvstore_config)", "kv", kvdriver.Redact(u))
			f.kvURLs = []string{u}
		}
	}
	specs, err := parseStores(f.kvURLs, f.slot)
	if err != nil {
		return nil, nil, err
	}
	if err := checkTemplates(ctx, f.databaseURL, f.publication, m, tmpl); err != nil {
		return nil, nil, err
	}
	cfgs := make([]agent.Config, len(specs))
	for i, sp := range specs {
		cfgs[i] = agent.Config{
			DatabaseURL: f.databaseURL,
			Slot:        sp.slot,
			Name:        sp.name,
			Publication: f.publication,
			Prefix:      f.prefix,
			Templates:   tmpl,
			Logger:      slog.Default(),
		}
	}
	return cfgs, specs, nil
}

// openStore opens the store; with retry, an error worth retrying
// (kvdriver.Retryable: an unreachable store) is retried with capped
// backoff until ctx is done (then the error is ctx's), while a bad URL
// fails at once.
func openStore(ctx context.Context, rawURL string, retry bool) (*kvdriver.Store, error) {
	bo := retryBackoff()
	for {
		store, err := kvdriver.Open(ctx, rawURL)
		switch {
		case err == nil || !retry:
			return store, err
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case !kvdriver.Retryable(err):
			return nil, err
		}
		d := bo.Next()
		slog.Warn("cannot open the key-value store; retrying", "retry_in", d, "err", err)
		if !backoff.Sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}

// retryBackoff is the backoff of the commands' retries while a server is
// unreachable: 250ms doubling up to 30s.
func retryBackoff() backoff.Backoff {
	return backoff.Backoff{Min: 250 * time.Millisecond, Max: 30 * time.Second}
}

func runAgent(ctx context.Context, args []string) error {
	fs := newFlagSet("agent", "agent --database-url URL --kv URL [--kv NAME=URL ...] [--slot lw_agent] [--publication bagger_lw_storage] [--prefix \"\"] [--key-template schema.table=/Tmpl/{col},...] [--metrics-addr 127.0.0.1:9187]\n\n"+
		"High availability: run the same command on several machines; one agent per\n"+
		"slot streams, the others wait as standbys and take over when it dies or\n"+
		"loses its database connection (see the package agent documentation for the\n"+
		"server settings that bound the take-over time after a network cut).\n\n"+
		"Fan-out: each --kv after the first streams its own slot <slot>_NAME and\n"+
		"checkpoint, so one store's outage holds back no other. The agent creates a\n"+
		"missing slot (with an initial copy) on first start; drop the slot of a\n"+
		"store you remove: SELECT pg_drop_replication_slot('<slot>_NAME').")
	f := agentFlags{}
	f.register(fs)
	statusInterval := fs.Duration("status-interval", agent.DefaultStatusInterval, "longest time between standby status updates (keep below wal_sender_timeout)")
	metricsAddr := fs.String("metrics-addr", envOr("LENKWERK_METRICS_ADDR", ""), "serve /metrics, /healthz and /readyz on this `address`, e.g. 127.0.0.1:9187 (:9187 listens on every interface) (env LENKWERK_METRICS_ADDR; empty: off)")
	readyLag := fs.Duration("ready-lag", agent.DefaultReadyLag, "/readyz answers 503 when the lag reaches this bound")
	syncStandbys := fs.String("sync-standbys", envOr("LENKWERK_SYNC_STANDBYS", ""), "apply a transaction to the store only once these standbys (`application_name,...` in pg_stat_replication) flushed its commit, so a failover to one of them never takes back a value the store showed (env LENKWERK_SYNC_STANDBYS; empty: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfgs, specs, err := f.configs(ctx, fs)
	if err != nil {
		return err
	}
	var standbys []string
	for _, n := range strings.Split(*syncStandbys, ",") {
		if n = strings.TrimSpace(n); n != "" {
			standbys = append(standbys, n)
		}
	}
	if err := agent.CheckSyncStandbys(standbys); err != nil {
		return fmt.Errorf("--sync-standbys: %w", err)
	}
	gcPercent, memLimit := tuneGC()
	slog.Debug("garbage collector", "gogc", gcPercent, "memory_limit_bytes", memLimit)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := agent.NewMetrics(reg)
	if err != nil {
		return err
	}
	// Each store is an independent stream: its store is opened (retried
	// while unreachable) and its agent run on a goroutine of its own.
	agents := make([]*agent.Agent, len(cfgs))
	var mu sync.Mutex
	notReady := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var why []string
		for i, a := range agents {
			if a == nil {
				why = append(why, fmt.Sprintf("store %s (slot %s): store not open yet", specs[i].name, specs[i].slot))
				continue
			}
			why = append(why, agent.NotReady(*readyLag, a)...)
		}
		return why
	}
	if *metricsAddr != "" {
		stop, err := serveMetrics(*metricsAddr, agent.Handler(reg, notReady))
		if err != nil {
			return err
		}
		defer stop()
	}
	start := time.Now()
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i := range cfgs {
		cfg, sp := cfgs[i], specs[i]
		cfg.StatusInterval = *statusInterval
		cfg.Metrics = metrics
		cfg.SyncStandbys = standbys
		wg.Go(func() {
			errs[i] = runStream(ctx, cfg, sp, func(a *agent.Agent) {
				mu.Lock()
				agents[i] = a
				mu.Unlock()
			})
		})
	}
	wg.Wait()
	for i, a := range agents {
		if a != nil {
			slog.Info("lenkwerk agent stopped", "store", specs[i].name, "slot", specs[i].slot, "uptime", time.Since(start).Round(time.Second), "checkpoint", a.Status().Checkpoint)
		}
	}
	return errors.Join(errs...)
}

// runStream opens one store and runs its agent until ctx is done.
func runStream(ctx context.Context, cfg agent.Config, sp storeSpec, started func(*agent.Agent)) error {
	store, err := openStore(ctx, sp.url, true)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the store
		}
		return fmt.Errorf("store %s: %w", sp.name, err)
	}
	defer store.Close()
	cfg.Store = store
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	started(a)
	slog.Info("lenkwerk agent starting", "store", sp.name, "kv", kvdriver.Redact(sp.url), "slot", cfg.Slot, "publication", cfg.Publication, "prefix", cfg.Prefix)
	return a.Run(ctx)
}
