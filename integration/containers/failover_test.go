package containers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/harness"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/jackc/pgx/v5"
)

// failoverBound is how long after the active agent is killed a change may
// take to reach the store through the standby.
const failoverBound = 10 * time.Second

// Scenario 7: two agent containers on the same slot and store under load;
// the active one is SIGKILLed: the standby takes over within failoverBound
// (a transaction committed after the kill reaches the store), the store
// converges and no transaction is applied twice. The killed agent, started
// again, becomes the standby and changes nothing.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, 1)
	// Each agent names its connections after itself (the harness sets
	// application_name), so the server tells which one holds the slot.
	b, err := s.AddAgent("agent-b")
	s.must(err)
	agents := map[string]*harness.Process{s.Agent().Name(): s.Agent(), b.Name(): b}
	for _, a := range agents {
		s.must(a.Start(ctx))
	}
	s.converge(ctx, 60*time.Second)
	active, pid := s.waitRoles(ctx, "", 30*time.Second)
	standby := s.Agent().Name()
	if active == standby {
		standby = b.Name()
	}
	s.waitRoles(ctx, standby, 30*time.Second)
	t.Logf("%s streams (walsender pid %d), %s waits", active, pid, standby)

	l := startLoad(t, s, 7)
	pause(3 * time.Second)
	store := s.Store()
	killed := time.Now()
	if err := agents[active].Kill(ctx); err != nil {
		t.Fatal(err)
	}
	exited := time.Since(killed)
	// The marker is committed after the kill: only the standby can carry
	// it to the store. Its key is one the load does not touch.
	marker := fmt.Sprintf(`{"killed": %q}`, active)
	s.exec(ctx, `SELECT storage.save_config('failover', '`+marker+`')`)
	committed := time.Since(killed)
	err = testutil.Poll(ctx, failoverBound-committed, "the marker", func(ctx context.Context) (bool, error) {
		kv, err := store.Get(ctx, "/Config/failover")
		return err == nil && strings.Contains(string(kv.Value), active), err
	})
	if err != nil {
		t.Fatalf("a change committed %v after %s was killed did not reach the store within %v of the kill: %v",
			committed.Round(time.Millisecond), active, failoverBound, err)
	}
	t.Logf("take-over: a change committed after the kill reached the store %v after it (the container had exited after %v, the change committed after %v)",
		time.Since(killed).Round(time.Millisecond), exited.Round(time.Millisecond), committed.Round(time.Millisecond))
	now, takeoverPID := s.waitRoles(ctx, "", 10*time.Second)
	if now != standby {
		t.Fatalf("after the kill of %s, %s holds the slot; want %s", active, now, standby)
	}

	// The killed agent comes back: it must wait, not take the slot.
	pause(2 * time.Second)
	if err := agents[active].Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Back, it waits for the lock while the new active streams on, on the
	// same walsender: it did not disturb it.
	if now, nowPID := s.waitRoles(ctx, active, 30*time.Second); now != standby || nowPID != takeoverPID {
		t.Fatalf("after %s came back, %s (walsender pid %d) holds the slot; want %s (pid %d) still", active, now, nowPID, standby, takeoverPID)
	}
	l.finish(t)
	s.converge(ctx, 60*time.Second)
	if now, nowPID := s.waitRoles(ctx, active, 10*time.Second); now != standby || nowPID != takeoverPID {
		t.Errorf("at the end, %s (walsender pid %d) holds the slot; want %s (pid %d) still", now, nowPID, standby, takeoverPID)
	}
	for name, c := range agents {
		if running, err := c.Running(ctx); err != nil || !running {
			t.Errorf("agent container %s: running %v, %v", name, running, err)
		}
	}
	s.checkNoReplay(ctx)
}

// waitRoles waits until one agent's walsender holds the slot and, when
// standby is not "", the agent named standby waits for the HA lock. It
// returns the application_name and walsender pid of the slot's holder.
func (s *stack) waitRoles(ctx context.Context, standby string, timeout time.Duration) (active string, pid int32) {
	s.t.Helper()
	err := testutil.Poll(ctx, timeout, fmt.Sprintf("an agent to stream and %q to wait", standby), func(ctx context.Context) (bool, error) {
		var err error
		active, pid, err = s.roles(ctx, standby)
		return err == nil, err
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return active, pid
}

// errRoles says the roles are not (yet) as wanted.
var errRoles = errors.New("roles not as wanted")

// roles reads from the server who holds the slot (its active walsender's
// application_name) and whether standby waits for the agents' advisory
// lock (an ungranted advisory lock of a session of that name).
func (s *stack) roles(ctx context.Context, standby string) (string, int32, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DatabaseURL())
	if err != nil {
		return "", 0, err
	}
	defer conn.Close(context.Background())
	var (
		active  string
		pid     int32
		waiting bool
	)
	err = conn.QueryRow(ctx, `
		SELECT coalesce(a.application_name, ''), coalesce(s.active_pid, 0),
			EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity w ON w.pid = l.pid
				WHERE l.locktype = 'advisory' AND NOT l.granted AND w.application_name = $2)
		FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1`, agent.DefaultSlot, standby).Scan(&active, &pid, &waiting)
	if err != nil {
		return "", 0, fmt.Errorf("slot %s: %w", agent.DefaultSlot, err)
	}
	switch {
	case pid == 0:
		return "", 0, fmt.Errorf("%w: no one streams from slot %s", errRoles, agent.DefaultSlot)
	case standby != "" && active == standby:
		return active, pid, fmt.Errorf("%w: %s streams, want it to wait", errRoles, standby)
	case standby != "" && !waiting:
		return active, pid, fmt.Errorf("%w: %s streams, %s does not wait for the lock", errRoles, active, standby)
	}
	return active, pid, nil
}
