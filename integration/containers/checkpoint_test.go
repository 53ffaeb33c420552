package containers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
)

// checkNoReplay reads the whole history of the agent's checkpoint key and
// fails the test when a transaction was applied twice: each batch the
// agent writes carries the checkpoint of the transaction it applies, so a
// transaction applied again after a crash shows as a commit LSN that is
// not greater than one before it.
func (s *stack) checkNoReplay(ctx context.Context) {
	s.t.Helper()
	store := s.Store()
	key := agent.CheckpointKey("", agent.DefaultSlot)
	kvs, _, err := store.List(ctx, key)
	if err != nil || len(kvs) != 1 {
		s.t.Fatalf("list %s: %v, %d keys", key, err, len(kvs))
	}
	last := kvs[0].ModRevision
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var (
		prev    agent.Checkpoint
		batches int
	)
	for resp := range store.Watch(ctx, key, 1) {
		if resp.Err != nil {
			s.t.Fatalf("watch the history of %s: %v", key, resp.Err)
		}
		for _, ev := range resp.Events {
			if ev.Key != key || ev.Type != kvdriver.OpPut {
				continue
			}
			var c agent.Checkpoint
			if err := json.Unmarshal(ev.Value, &c); err != nil {
				s.t.Fatalf("checkpoint at revision %d: %v", ev.Revision, err)
			}
			if err := advances(prev, c); err != nil {
				s.t.Fatalf("revision %d: %v", ev.Revision, err)
			}
			prev = c
			batches++
			if ev.Revision >= last {
				s.t.Logf("%d checkpoints, each past the one before", batches)
				return
			}
		}
	}
	s.t.Fatalf("the history of %s ended before revision %d", key, last)
}

// advances says why checkpoint c cannot follow prev, if it cannot.
func advances(prev, c agent.Checkpoint) error {
	if c.LSN < prev.LSN {
		return fmt.Errorf("checkpoint went back from %s to %s", prev.LSN, c.LSN)
	}
	if c.CommitLSN != 0 && prev.CommitLSN != 0 && c.CommitLSN <= prev.CommitLSN {
		return fmt.Errorf("transaction %s applied after transaction %s: applied twice (replayed after the restart)", c.CommitLSN, prev.CommitLSN)
	}
	return nil
}
