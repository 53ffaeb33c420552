package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
)

// lenkwerk skip writes the instruction the agent matches (agent's
// TestBlockedChangeAndSkip runs it against a blocked agent), by key or by
// the key's SHA-256 as the agent's error prints it, keeps earlier ones,
// and refuses incomplete or malformed arguments before touching the store.
func TestSkipCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "skiptest" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	store, err := mem.Open(ctx, mem.Config{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	kv := "mem://" + name
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runSkip(ctx, append([]string{"--kv", kv, "--slot", "s1", "--prefix", "/p"}, args...), &out)
		return out.String(), err
	}
	out, err := run("--table", "storage.config", "--lsn", "0/16B3F48", "--key", "/p/Config/x")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"slot s1", "storage.config", "/p/Config/x", "0/16B3F48", "fix or delete the row"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	hash := agent.KeyHash("/p/Config/long")
	if _, err := run("--table", "storage.config", "--lsn", "0/0", "--key-sha256", hash); err != nil {
		t.Fatal(err)
	}
	got, err := store.Get(ctx, agent.SkipKey("/p", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Skip []agent.Skip }
	if err := json.Unmarshal(got.Value, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Skip) != 2 || v.Skip[0].KeySHA256 != agent.KeyHash("/p/Config/x") || v.Skip[0].CommitLSN != "0/16B3F48" ||
		v.Skip[0].Table != "storage.config" || v.Skip[1].KeySHA256 != hash || v.Skip[1].CommitLSN != "0/0" {
		t.Fatalf("instructions = %+v", v.Skip)
	}

	for _, bad := range [][]string{
		{"--lsn", "0/1", "--key", "/k"},                                                    // no table
		{"--table", "storage.config", "--key", "/k"},                                       // no lsn
		{"--table", "storage.config", "--lsn", "0/1"},                                      // no key
		{"--table", "storage.config", "--lsn", "0/1", "--key", "/k", "--key-sha256", hash}, // both
		{"--table", "storage.config", "--lsn", "nope", "--key", "/k"},
		{"--table", "storage.config", "--lsn", "0/1", "--key-sha256", "abc"},
		{"--table", "config", "--lsn", "0/1", "--key", "/k"},
	} {
		if _, err := run(bad...); err == nil {
			t.Errorf("skip %q accepted", bad)
		}
	}
	t.Setenv("LENKWERK_KV_URL", "")
	if err := runSkip(ctx, []string{"--table", "storage.config", "--lsn", "0/1", "--key", "/k"}, &bytes.Buffer{}); !errors.Is(err, errUsage) {
		t.Errorf("skip without --kv: %v", err)
	}
	if err := json.Unmarshal(mustGet(t, ctx, store, agent.SkipKey("/p", "s1")), &v); err != nil || len(v.Skip) != 2 {
		t.Errorf("after refused calls: %+v, %v; want the 2 instructions", v.Skip, err)
	}
}

func mustGet(t *testing.T, ctx context.Context, s *kvdriver.Store, key string) []byte {
	t.Helper()
	kv, err := s.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return kv.Value
}
