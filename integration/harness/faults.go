package harness

import (
	"context"
	"fmt"
)

// The fault levers below break one part of the Stack and return once the
// fault is in place (or, for the Start and Heal levers, once the part is
// back and serving). The agent is expected to ride each fault out;
// WaitCaughtUp or integration/converge.Wait then shows that it did.
// A lever the backend or store cannot pull returns an error wrapping
// ErrUnsupported and changes nothing. Levers run one at a time.

// KillAgent kills the agent (SIGKILL: no clean shutdown, the slot is
// released by PostgreSQL when the connection drops). It stays down until
// RestartAgent (or Agent().Start).
func (s *Stack) KillAgent(ctx context.Context) error {
	return s.lever(ctx, "kill the agent", false, s.agent.Kill)
}

// RestartAgent stops the agent if it runs (SIGTERM, a clean shutdown) and
// starts it again. It does not wait for the agent to catch up.
func (s *Stack) RestartAgent(ctx context.Context) error {
	return s.lever(ctx, "restart the agent", false, func(ctx context.Context) error {
		if err := s.agent.stopIfRunning(ctx); err != nil {
			return err
		}
		return s.agent.Start(ctx)
	})
}

// StopStore stops the store: every etcd member, or, with PGKV, PostgreSQL
// itself (the store lives in the Lenkwerk database, so the database goes
// down with it). Data is kept for StartStore.
func (s *Stack) StopStore(ctx context.Context) error {
	return s.lever(ctx, "stop the store", false, s.b.stopStore)
}

// KillStore is StopStore without a clean shutdown, as a crash looks: etcd
// members hand over no leadership, PostgreSQL (PGKV, containers backend
// only) recovers from its WAL at StartStore.
func (s *Stack) KillStore(ctx context.Context) error {
	return s.lever(ctx, "kill the store", false, s.b.killStore)
}

// StartStore starts the store stopped by StopStore and waits until it
// serves. On the containers backend its host ports change: KVURL,
// DatabaseURL and Store return the new ones.
func (s *Stack) StartStore(ctx context.Context) error {
	return s.lever(ctx, "start the store", true, s.b.startStore)
}

// StopNode stops etcd member i (0-based) of an EtcdCluster (or the single
// member of Etcd, like StopStore). With PGKV it returns ErrUnsupported.
func (s *Stack) StopNode(ctx context.Context, i int) error {
	return s.lever(ctx, fmt.Sprintf("stop etcd member %d", i), false, func(ctx context.Context) error {
		return s.b.stopNode(ctx, i)
	})
}

// StartNode starts etcd member i again and waits until it serves.
func (s *Stack) StartNode(ctx context.Context, i int) error {
	return s.lever(ctx, fmt.Sprintf("start etcd member %d", i), true, func(ctx context.Context) error {
		return s.b.startNode(ctx, i)
	})
}

// StopPostgres stops PostgreSQL with a fast shutdown (pg_ctl stop's
// default; docker stop): sessions end, and the server waits for each
// walsender to have sent everything — and the agent to have confirmed
// it — before it goes. With PGKV the store goes with it. Data is kept for
// StartPostgres.
func (s *Stack) StopPostgres(ctx context.Context) error {
	return s.lever(ctx, "stop PostgreSQL", false, s.b.stopPostgres)
}

// KillPostgres kills PostgreSQL (SIGKILL: crash recovery at the next
// start). Containers backend only: the local backend returns
// ErrUnsupported.
func (s *Stack) KillPostgres(ctx context.Context) error {
	return s.lever(ctx, "kill PostgreSQL", false, s.b.killPostgres)
}

// StartPostgres starts PostgreSQL stopped by StopPostgres or KillPostgres
// and waits until it accepts connections. On the containers backend its
// host port changes: DatabaseURL (and, with PGKV, KVURL and Store) return
// the new one.
func (s *Stack) StartPostgres(ctx context.Context) error {
	return s.lever(ctx, "start PostgreSQL", true, s.b.startPostgres)
}

// RestartPostgres is StopPostgres then StartPostgres, as one lever.
func (s *Stack) RestartPostgres(ctx context.Context) error {
	return s.lever(ctx, "restart PostgreSQL", true, func(ctx context.Context) error {
		if err := s.b.stopPostgres(ctx); err != nil {
			return err
		}
		return s.b.startPostgres(ctx)
	})
}

// PartitionAgentFromDB cuts the network between the agent and PostgreSQL,
// and only that (containers backend: PostgreSQL and the store are on
// separate networks, the agent on both, and the agent's container leaves
// PostgreSQL's network). Its connections to PostgreSQL hang rather than
// fail, as in a real partition; it still reaches the store (with PGKV the
// store is PostgreSQL, so it reaches neither). The test reaches
// everything. Heal undoes it. The local backend returns ErrUnsupported.
func (s *Stack) PartitionAgentFromDB(ctx context.Context) error {
	return s.lever(ctx, "partition the agent from PostgreSQL", false, func(ctx context.Context) error {
		return s.b.partition(ctx, s.agent.p)
	})
}

// PartitionAgent cuts the agent off everything — PostgreSQL and the store
// — as a machine that lost its network (containers backend: its container
// leaves all the Stack's networks). Heal undoes it. The local backend
// returns ErrUnsupported.
func (s *Stack) PartitionAgent(ctx context.Context) error {
	return s.lever(ctx, "partition the agent", false, func(ctx context.Context) error {
		return s.b.isolate(ctx, s.agent.p)
	})
}

// Heal reconnects the agent partitioned by PartitionAgentFromDB or
// PartitionAgent. On a Stack without a partition it does nothing.
func (s *Stack) Heal(ctx context.Context) error {
	return s.lever(ctx, "heal the partition", false, func(ctx context.Context) error {
		return s.b.heal(ctx, s.agent.p)
	})
}

// lever runs one fault at a time; restarted servers may have moved, so
// the URLs (and, with them, the store) are refreshed after levers that
// start something.
func (s *Stack) lever(ctx context.Context, what string, restarts bool, f func(context.Context) error) error {
	s.levers.Lock()
	defer s.levers.Unlock()
	if err := f(ctx); err != nil {
		return fmt.Errorf("harness: %s: %w", what, err)
	}
	if restarts && s.b.movesPorts() {
		if err := s.refreshLocked(ctx); err != nil {
			return fmt.Errorf("harness: %s: %w", what, err)
		}
	}
	return nil
}
