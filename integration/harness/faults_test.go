package harness_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
				streams := logCount(t, s, streamingLine)
				must(t, s.RestartAgent(ctx))
				// A new run: it logs that it streams once more.
				waitLogCount(t, s, streamingLine, streams+1)
				if running, err := s.AgentRunning(ctx); err != nil || !running {
					t.Fatalf("after RestartAgent: running %v (%v)", running, err)
				}
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
				// PostgreSQL restarts while no etcd member runs: the
				// Stack follows it (a new host port on the containers
				// backend) and keeps the store's URL for StartStore.
				kvURL := s.KVURL()
				must(t, s.RestartPostgres(ctx))
				if got := s.KVURL(); got != kvURL {
					t.Errorf("KVURL changed while the store was down: %s, was %s", got, kvURL)
				}
				changes(t, s, "pg-restarted", 3)
				must(t, s.StartStore(ctx))
				changes(t, s, "store-up", 3)
				converged(t, s)
			})
			t.Run("StopNode", func(t *testing.T) {
				member0 := endpoints(t, s.KVURL())[0]
				must(t, s.StopNode(ctx, 0))
				if c, err := net.DialTimeout("tcp", member0, 2*time.Second); err == nil {
					c.Close()
					t.Fatalf("etcd member 0 (%s) accepts connections after StopNode", member0)
				}
				changes(t, s, "node-down", 3) // two of three keep quorum
				converged(t, s)
				must(t, s.StartNode(ctx, 0))
				member0 = endpoints(t, s.KVURL())[0] // moved on the containers backend
				if c, err := net.DialTimeout("tcp", member0, 2*time.Second); err != nil {
					t.Fatalf("etcd member 0 (%s) after StartNode: %v", member0, err)
				} else {
					c.Close()
				}
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
			if b == harness.Containers {
				t.Run("PartitionAgent", func(t *testing.T) {
					must(t, s.PartitionAgent(ctx))
					changes(t, s, "isolated", 3)
					stalled(t, s, "/PostgresInstance/isolated-0/5432")
					// The agent's container reaches nothing, the store
					// included: a command there fails (or hangs until
					// its context ends).
					key := agent.CheckpointKey(s.Prefix(), agent.DefaultSlot)
					ectx, cancel := context.WithTimeout(ctx, 4*time.Second)
					out, err := s.Agent().Exec(ectx, "kv", "--kv", s.AgentKVURL(), "get", key)
					cancel()
					if err == nil {
						t.Fatalf("during PartitionAgent the agent's container reaches the store:\n%s", out)
					}
					must(t, s.Heal(ctx))
					if out, err := s.Agent().Exec(ctx, "kv", "--kv", s.AgentKVURL(), "get", key); err != nil || !strings.Contains(out, `"lsn"`) {
						t.Fatalf("after Heal the agent's container does not reach the store: %v\n%s", err, out)
					}
					if running, err := s.AgentRunning(ctx); err != nil || !running {
						t.Fatalf("the agent did not survive the partition: running %v (%v)", running, err)
					}
					// The agent rides the cut out on its own: it
					// notices its dead connections and reconnects.
					changes(t, s, "reconnected", 3)
					converged(t, s)
				})
			}
		})
	}
}

// streamingLine is the agent's log line when it streams changes.
const streamingLine = "msg=streaming "

// logCount counts the agent's log lines containing sub, over all its runs.
func logCount(t testing.TB, s *harness.Stack, sub string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.Agent().Log(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(out), sub)
}

// waitLogCount waits up to 30 s for the agent to have logged want lines
// containing sub, over all its runs.
func waitLogCount(t testing.TB, s *harness.Stack, sub string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for got := logCount(t, s, sub); got < want; got = logCount(t, s, sub) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent logged %q %d times, want %d", sub, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// endpoints are the host:port of each etcd member in an etcd:// URL, in
// member order.
func endpoints(t testing.TB, kvURL string) []string {
	t.Helper()
	hosts, ok := strings.CutPrefix(kvURL, "etcd://")
	if !ok {
		t.Fatalf("not an etcd URL: %s", kvURL)
	}
	if i := strings.IndexAny(hosts, "/?"); i >= 0 {
		hosts = hosts[:i]
	}
	return strings.Split(hosts, ",")
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
			// The store is PostgreSQL: down with it.
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if conn, err := pgx.Connect(cctx, s.DatabaseURL()); err == nil {
				conn.Close(context.Background())
				t.Fatal("PostgreSQL accepts connections after StopStore with pgkv")
			}
			cancel()
			// A wait that times out says why: the store was down.
			wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err := s.WaitForKey(wctx, "/PostgresInstance/never/5432", harness.Exists)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last store error: ") {
				t.Errorf("WaitForKey on a stopped store: %v, want a timeout with the last store error", err)
			}
			t.Logf("WaitForKey on a stopped store: %v", err)
			if err := s.StartStore(ctx); err != nil {
				t.Fatal(err)
			}
			changes(t, s, "after", 3)
			converged(t, s)
		})
	}
}
