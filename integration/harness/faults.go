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
// ErrUnsupported and changes nothing.

// KillAgent kills the agent (SIGKILL: no clean shutdown, the slot is
// released by PostgreSQL when the connection drops). It stays down until
// RestartAgent.
func (s *Stack) KillAgent(ctx context.Context) error {
	return s.lever(ctx, "kill the agent", false, s.b.killAgent)
}

// RestartAgent stops the agent if it runs (SIGTERM, a clean shutdown) and
// starts it again. It does not wait for the agent to catch up.
func (s *Stack) RestartAgent(ctx context.Context) error {
	return s.lever(ctx, "restart the agent", false, func(ctx context.Context) error {
		if err := s.b.stopAgent(ctx); err != nil {
			return err
		}
		return s.b.startAgent(ctx)
	})
}

// StopStore stops the store: every etcd member, or, with PGKV, PostgreSQL
// itself (the store lives in the Lenkwerk database, so the database goes
// down with it). Data is kept for StartStore.
func (s *Stack) StopStore(ctx context.Context) error {
	return s.lever(ctx, "stop the store", false, s.b.stopStore)
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

// PartitionAgentFromDB cuts the agent off the network (containers backend:
// its container is disconnected from the stack's network, so its
// connections hang rather than fail, as in a real partition). The agent
// then reaches neither PostgreSQL nor the store (both are on that network);
// the test still reaches everything. Heal undoes it. The local backend
// returns ErrUnsupported.
func (s *Stack) PartitionAgentFromDB(ctx context.Context) error {
	return s.lever(ctx, "partition the agent", false, s.b.partition)
}

// Heal reconnects the agent partitioned by PartitionAgentFromDB.
func (s *Stack) Heal(ctx context.Context) error {
	return s.lever(ctx, "heal the partition", false, s.b.heal)
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
