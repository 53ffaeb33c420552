package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

const skipSynopsis = `skip --kv URL [--slot lw_agent] [--prefix ""] --table SCHEMA.TABLE --lsn LSN (--key KEY | --key-sha256 HEX)

Tells the running agent of the slot to leave out one change it cannot
mirror (a key or value its store refuses), which it otherwise retries
forever, mirroring nothing after it. The agent's error names the change and
prints this command with its arguments (the store key by its SHA-256, since
keys can be long). Only that change, of that table and key in the
transaction committed at LSN (0/0: in a table copy), is left out, and only
because the agent cannot mirror it; the store keeps what it has for the key
until the row changes again, so fix or delete the row at the source.

The instruction is written to the store (<prefix>/.lenkwerk/skip/<slot>),
which needs the agent's store credentials; the agent acts on it within a
second or at its next attempt, without a restart.`

func init() {
	register("skip", "leave out a change the agent cannot mirror (it holds back everything after it)", func(ctx context.Context, args []string) error {
		return runSkip(ctx, args, os.Stdout)
	})
}

func runSkip(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlagSet("skip", skipSynopsis)
	kvURL := fs.String("kv", envOr("LENKWERK_KV_URL", ""), "the agent's key-value store `URL` (env LENKWERK_KV_URL)")
	slot := fs.String("slot", envOr("LENKWERK_SLOT", agent.DefaultSlot), "the agent's replication slot, as its error names it (env LENKWERK_SLOT)")
	prefix := fs.String("prefix", envOr("LENKWERK_PREFIX", ""), "the agent's key `prefix` (env LENKWERK_PREFIX)")
	table := fs.String("table", "", "the change's table, `schema.table`")
	lsn := fs.String("lsn", "", "commit `LSN` of the change's transaction (0/0: a table copy)")
	key := fs.String("key", "", "the change's store `key`")
	keyHash := fs.String("key-sha256", "", "SHA-256 of the change's store key, in `hex` (instead of --key)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var problem string
	switch {
	case fs.NArg() > 0:
		problem = fmt.Sprintf("unexpected arguments %q", fs.Args())
	case *kvURL == "":
		problem = "--kv is required (the agent's store)"
	case *table == "" || *lsn == "":
		problem = "--table and --lsn are required (the agent's error names them)"
	case (*key == "") == (*keyHash == ""):
		problem = "give either --key or --key-sha256"
	}
	if problem != "" {
		fs.Usage()
		return fmt.Errorf("%w: %s", errUsage, problem)
	}
	commit, err := pglogrepl.ParseLSN(*lsn)
	if err != nil {
		return fmt.Errorf("--lsn: %w", err)
	}
	sk := agent.Skip{Table: *table, KeySHA256: *keyHash, CommitLSN: commit.String()}
	if *key != "" {
		sk.KeySHA256, sk.Key = agent.KeyHash(*key), agent.ShortKey(*key)
	}
	store, err := kvdriver.Open(ctx, *kvURL)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := agent.AddSkip(ctx, store, *prefix, *slot, sk); err != nil {
		return err
	}
	what := "in a table copy"
	if commit != 0 {
		what = "in the transaction committed at " + commit.String()
	}
	shown := sk.Key
	if shown == "" {
		shown = "with SHA-256 " + sk.KeySHA256
	}
	_, err = fmt.Fprintf(stdout, "The agent of slot %s leaves out the change of %s to key %s %s, if it cannot mirror it.\n"+
		"The store keeps what it has for that key until the row changes again: fix or delete the row at the source.\n",
		*slot, sk.Table, shown, what)
	return err
}
