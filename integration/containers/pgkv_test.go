package containers_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
)

// Scenario 8: a postgres-only deployment. The agent mirrors into the pgkv
// store in the same PostgreSQL, and a watcher container (lenkwerk kv
// watch, from revision 2: everything after the empty store) sees every
// change: every revision up to the store's, and replaying its events
// gives exactly the store's contents.
func TestPostgresOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, 0)
	watcher, err := s.Command("watcher", "kv", "--kv", s.AgentKVURL(), "watch", "/", "--from", "2")
	s.must(err)
	s.must(watcher.Start(ctx))
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.save_config('retention', '"7d"')`)
	s.startAgent()
	s.underLoad(ctx, 8, 90*time.Second, func() {
		s.exec(ctx, `SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db1' LIMIT 1), 3)`)
		pause(3 * time.Second)
	})

	store := s.Store()
	var (
		replayed map[string]string
		revs     map[int64]bool
		kvs      []kvdriver.KV
		rev      int64
	)
	err = testutil.Poll(ctx, 30*time.Second, "the watcher to see every change", func(ctx context.Context) (bool, error) {
		var err error
		if kvs, rev, err = store.List(ctx, "/"); err != nil {
			return false, err
		}
		out, err := watcher.Log(ctx)
		if err != nil {
			return false, err
		}
		if replayed, revs, err = replay(out); err != nil {
			return false, err
		}
		if diff := compareReplay(kvs, rev, replayed, revs); diff != "" {
			return false, errors.New(diff)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	running, err := watcher.Running(ctx)
	if err != nil || !running {
		t.Fatalf("the watcher exited (%v)", err)
	}
	t.Logf("the watcher saw revisions 2…%d, %d keys", rev, len(kvs))
	s.agentRunning(ctx)
	s.checkNoReplay(ctx)
}

// replay applies the watcher's output lines ("REV\tput\tKEY\tVALUE",
// "REV\tdelete\tKEY") in order; other lines (logs) are skipped.
func replay(out []byte) (map[string]string, map[int64]bool, error) {
	state := map[string]string{}
	revs := map[int64]bool{}
	var prev int64
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), "\t", 4)
		if len(f) < 3 || (f[1] != "put" && f[1] != "delete") {
			continue
		}
		rev, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if rev < prev {
			return nil, nil, fmt.Errorf("revision %d after %d", rev, prev)
		}
		prev = rev
		revs[rev] = true
		switch {
		case f[1] == "delete":
			delete(state, f[2])
		case len(f) == 4:
			state[f[2]] = f[3]
		default:
			return nil, nil, fmt.Errorf("put line without value: %q", sc.Text())
		}
	}
	return state, revs, sc.Err()
}

// compareReplay describes how the replayed watch differs from the store
// listed at rev ("" when it does not).
func compareReplay(kvs []kvdriver.KV, rev int64, replayed map[string]string, revs map[int64]bool) string {
	var missing []int64
	for r := int64(2); r <= rev; r++ {
		if !revs[r] {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		if len(missing) > 10 {
			missing = missing[:10]
		}
		return fmt.Sprintf("revisions up to %d not seen, e.g. %v", rev, missing)
	}
	var diffs []string
	seen := map[string]bool{}
	for _, kv := range kvs {
		seen[kv.Key] = true
		var b bytes.Buffer
		if err := json.Compact(&b, kv.Value); err != nil {
			return err.Error()
		}
		if got, ok := replayed[kv.Key]; !ok || got != b.String() {
			diffs = append(diffs, fmt.Sprintf("%s: store %s, watched %q", kv.Key, b.String(), got))
		}
	}
	for k := range replayed {
		if !seen[k] {
			diffs = append(diffs, k+": watched, not in the store")
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 10 {
			diffs = diffs[:10]
		}
		return strings.Join(diffs, "\n")
	}
	return ""
}
