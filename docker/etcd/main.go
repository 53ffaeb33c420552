// Command etcd is an etcd server built from this module's
// go.etcd.io/etcd/server/v3 (package embed), so the etcd image needs no
// registry. It takes etcd's own member and clustering flags, registered by
// embed.Config.AddFlags (--name, --data-dir, --listen-client-urls,
// --advertise-client-urls, --listen-peer-urls, --initial-advertise-peer-urls,
// --initial-cluster, --initial-cluster-token, --initial-cluster-state,
// --log-level, …), and the ETCD_* environment variables for them, so the
// tests and docker/compose.yaml run it exactly like the official image's
// /usr/local/bin/etcd. SIGTERM and SIGINT stop it cleanly.
//
// etcdmain (the real etcd main) is not used: it pulls in cobra, which this
// module does not otherwise need.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/pkg/v3/flags"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := embed.NewConfig()
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	cfg.AddFlags(fs)
	state := flags.NewSelectiveStringValue(embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	fs.Var(state, "initial-cluster-state", "initial cluster state: 'new' or 'existing'")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	lg, err := zap.NewProduction()
	if err != nil {
		return err
	}
	if err := flags.SetFlagsFromEnv(lg, "ETCD", fs); err != nil {
		return err
	}
	// The URL flags are flag.Values of their own, as in etcdmain.
	cfg.ListenPeerUrls = flags.UniqueURLsFromFlag(fs, "listen-peer-urls")
	cfg.AdvertisePeerUrls = flags.UniqueURLsFromFlag(fs, "initial-advertise-peer-urls")
	cfg.ListenClientUrls = flags.UniqueURLsFromFlag(fs, "listen-client-urls")
	cfg.ListenClientHttpUrls = flags.UniqueURLsFromFlag(fs, "listen-client-http-urls")
	cfg.AdvertiseClientUrls = flags.UniqueURLsFromFlag(fs, "advertise-client-urls")
	cfg.ListenMetricsUrls = flags.UniqueURLsFromFlag(fs, "listen-metrics-urls")
	cfg.CORS = flags.UniqueURLsMapFromFlag(fs, "cors")
	cfg.HostWhitelist = flags.UniqueStringsMapFromFlag(fs, "host-whitelist")
	cfg.LogOutputs = flags.UniqueStringsFromFlag(fs, "log-outputs")
	cfg.ClusterState = state.String()
	// Without --initial-cluster the member is a cluster of its own, named
	// by --name (NewConfig computed it for the default name).
	if !flags.IsSet(fs, "initial-cluster") {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	if cfg.Dir == "" {
		cfg.Dir = cfg.Name + ".etcd"
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer e.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-sig:
		return nil
	}
	select {
	case err := <-e.Err():
		return err
	case <-sig:
		return nil
	case <-e.Server.StopNotify():
		// Removed from the cluster, or stopped by an internal error.
		return errors.New("the server stopped")
	}
}
