package harness_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/harness"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestFaults pulls every lever of a three-member etcd stack in turn, on
// each backend, and shows after each that the stack converges: the agent
// rode the fault out, nothing was lost.
func TestFaults(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			s := harness.Start(t, harness.WithBackend(b), harness.WithKV(harness.EtcdCluster))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			must := func(t *testing.T, err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}

			t.Run("KillAgent", func(t *testing.T) {
				changes(t, s, "kill-before", 3)
				must(t, s.KillAgent(ctx))
				if running, err := s.AgentRunning(ctx); err != nil || running {
					t.Fatalf("after KillAgent: running %v (%v)", running, err)
				}
				changes(t, s, "kill-during", 3) // piles up in the slot
				stalled(t, s, "/PostgresInstance/kill-during-0/5432")
				must(t, s.RestartAgent(ctx))
				changes(t, s, "kill-after", 3)
				converged(t, s)
			})
			t.Run("RestartAgent", func(t *testing.T) {
				changes(t, s, "restart-before", 3)
				must(t, s.RestartAgent(ctx))
				changes(t, s, "restart-after", 3)
				converged(t, s)
			})
			t.Run("StopStore", func(t *testing.T) {
				must(t, s.StopStore(ctx))
				sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				if _, err := s.Store().Get(sctx, "/PostgresInstance/x/1"); err == nil || errors.Is(err, kvdriver.ErrNotFound) {
					t.Errorf("the store answers after StopStore: %v", err)
				}
				cancel()
				changes(t, s, "store-down", 3) // the agent retries
				must(t, s.StartStore(ctx))
				changes(t, s, "store-up", 3)
				converged(t, s)
			})
			t.Run("StopNode", func(t *testing.T) {
				must(t, s.StopNode(ctx, 0))
				changes(t, s, "node-down", 3) // two of three keep quorum
				converged(t, s)
				must(t, s.StartNode(ctx, 0))
				changes(t, s, "node-up", 3)
				converged(t, s)
			})
			t.Run("PartitionAgentFromDB", func(t *testing.T) {
				err := s.PartitionAgentFromDB(ctx)
				if b == harness.Local {
					if !errors.Is(err, harness.ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
						t.Fatalf("PartitionAgentFromDB on the local backend: %v, want ErrUnsupported", err)
					}
					if err := s.Heal(ctx); !errors.Is(err, harness.ErrUnsupported) {
						t.Fatalf("Heal on the local backend: %v, want ErrUnsupported", err)
					}
					if err := s.PartitionAgent(ctx); !errors.Is(err, harness.ErrUnsupported) {
						t.Fatalf("PartitionAgent on the local backend: %v, want ErrUnsupported", err)
					}
					changes(t, s, "no-partition", 3)
					converged(t, s)
					return
				}
				must(t, err)
				changes(t, s, "partitioned", 3)
				stalled(t, s, "/PostgresInstance/partitioned-0/5432")
				// The cut is between the agent and PostgreSQL only: from
				// inside the agent's container the store still answers.
				key := agent.CheckpointKey(s.Prefix(), agent.DefaultSlot)
				out, err := s.Agent().Exec(ctx, "kv", "--kv", s.AgentKVURL(), "get", key)
				if err != nil || !strings.Contains(out, `"lsn"`) {
					t.Fatalf("during PartitionAgentFromDB the agent's container does not reach the store: %v\n%s", err, out)
				}
				must(t, s.Heal(ctx))
				changes(t, s, "healed", 3)
				converged(t, s)
				if running, err := s.AgentRunning(ctx); err != nil || !running {
					t.Fatalf("the agent did not ride the partition out: running %v (%v)", running, err)
				}
			})
		})
	}
}

// stalled fails t if key, committed in the database, shows up in the store
// within a few seconds: the fault must keep it from the store.
func stalled(t *testing.T, s *harness.Stack, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.WaitForKey(ctx, key, harness.Exists); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s reached the store despite the fault (%v)", key, err)
	}
}

// TestStopStorePGKV stops the store of a Postgres-only stack, which is
// PostgreSQL itself, and shows the agent comes back with it; the etcd
// levers are refused.
func TestStopStorePGKV(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			s := harness.Start(t, harness.WithBackend(b), harness.WithKV(harness.PGKV))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := s.StopNode(ctx, 0); !errors.Is(err, harness.ErrUnsupported) {
				t.Fatalf("StopNode with pgkv: %v, want ErrUnsupported", err)
			}
			changes(t, s, "before", 3)
			if err := s.StopStore(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.StartStore(ctx); err != nil {
				t.Fatal(err)
			}
			changes(t, s, "after", 3)
			converged(t, s)
		})
	}
}
