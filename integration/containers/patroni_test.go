package containers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/harness"
	"github.com/bagger/lenkwerk/integration/testutil"
)

// Agent log lines that name the path an agent took after the database's
// primary moved.
const (
	logInitialSync   = "initial sync: copying every published table"
	logStreamingOn   = "the checkpoint is on its history: streaming on"
	logHistoryResync = "the database's history changed under the store: copying every table again"
	logSlotMissing   = "replication slot is missing: copying every table again"
)

// newPatroniStack is newStack on a two-member Patroni cluster (Patroni and
// the store sharing one etcd), the agent started and caught up.
func newPatroniStack(t *testing.T, ctx context.Context, opts ...harness.Option) *stack {
	t.Helper()
	s := newStack(t, 1, append([]harness.Option{harness.WithPatroni()}, opts...)...)
	s.startAgent()
	// An empty database converges before the agent's first session: wait
	// until it streams from the slot.
	s.waitRoles(ctx, "", 90*time.Second)
	s.converge(ctx, 90*time.Second)
	s.logSlots(ctx, "after the initial sync")
	return s
}

// logSlots logs the agent's slot as each running Patroni member sees it.
func (s *stack) logSlots(ctx context.Context, when string) {
	s.t.Helper()
	p := s.Patroni()
	var states []string
	for i, m := range p.Members {
		if running, err := m.Running(ctx); err != nil || !running {
			states = append(states, m.Name+": down")
			continue
		}
		st, err := p.Slot(ctx, i, agent.DefaultSlot)
		if err != nil {
			states = append(states, fmt.Sprintf("%s: %v", m.Name, err))
			continue
		}
		states = append(states, st.String())
	}
	s.t.Logf("slot %s %s: %s", agent.DefaultSlot, when, strings.Join(states, "; "))
}

// markerReaches commits a marker through Bagger's function and returns how
// long after since it reached the store.
func (s *stack) markerReaches(ctx context.Context, name string, since time.Time, timeout time.Duration) time.Duration {
	s.t.Helper()
	value := fmt.Sprintf(`{"%s": %d}`, name, since.UnixNano())
	s.exec(ctx, `SELECT storage.save_config('`+name+`', '`+value+`')`)
	store := s.Store()
	err := testutil.Poll(ctx, timeout, "the "+name+" marker", func(ctx context.Context) (bool, error) {
		kv, err := store.Get(ctx, "/Config/"+name)
		return err == nil && strings.Contains(string(kv.Value), fmt.Sprint(since.UnixNano())), err
	})
	if err != nil {
		s.t.Fatalf("the %s marker did not reach the store within %v: %v", name, timeout, err)
	}
	return time.Since(since)
}

// standbyAgent adds a second agent, agent-b, starts it and waits until it
// waits for the HA lock while the first agent streams.
func (s *stack) standbyAgent(ctx context.Context) *harness.Process {
	s.t.Helper()
	b, err := s.AddAgent("agent-b")
	s.must(err)
	s.must(b.Start(ctx))
	s.waitRoles(ctx, b.Name(), 30*time.Second)
	return b
}

// promote pulls lever, a switchover or a failover, under load, and logs how
// long after since (what starts the clock) the new primary took writes and
// a change committed then reached the store (within timeout), then the
// slots. what names the marker and the log lines.
func (s *stack) promote(ctx context.Context, what, since string, lever func(context.Context) error, timeout time.Duration) {
	s.t.Helper()
	began := time.Now()
	s.must(lever(ctx))
	promoted := time.Since(began)
	caught := s.markerReaches(ctx, what, began, timeout)
	s.t.Logf("%s: the new primary took writes %v after %s; a change committed then reached the store %v after %s",
		what, promoted.Round(time.Millisecond), since, caught.Round(time.Millisecond), since)
	s.logSlots(ctx, "after the "+what)
}

// Scenario: a planned Patroni switchover under load, two agents (one
// streams, one waits for the lock). The agents follow the primary through
// their multi-host URL and one streams on from Patroni's copy of the slot,
// without a full copy.
func TestPatroniSwitchover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newPatroniStack(t, ctx)
	b := s.standbyAgent(ctx)
	// What Patroni does to a slot it does not know: created on the
	// primary, watched across the switchover.
	s.exec(ctx, `SELECT pg_create_logical_replication_slot('`+probeSlot+`', 'pgoutput')`)
	pause(5 * time.Second) // two Patroni loops (loop_wait 2 s)
	s.logProbeSlot(ctx, "5 s after its creation")
	l := startLoad(t, s, 15)
	pause(3 * time.Second)

	s.promote(ctx, "switchover", "the switchover began", s.SwitchoverPostgres, 60*time.Second)
	s.logProbeSlot(ctx, "after the switchover")

	l.finish(t)
	s.converge(ctx, 60*time.Second)
	s.agentRunning(ctx)
	s.logProbeSlot(ctx, "at the end")
	s.logPatroniSlotLines(ctx)
	active, _ := s.waitRoles(ctx, "", 30*time.Second)
	t.Logf("at the end %s streams", active)
	syncs, streamed := 0, 0
	for _, a := range []*harness.Process{s.Agent(), b} {
		log := agentLog(ctx, t, a)
		syncs += strings.Count(log, logInitialSync)
		streamed += strings.Count(log, logStreamingOn)
	}
	if syncs != 1 {
		t.Errorf("the agents copied the tables %d times; want 1 (the first start only)", syncs)
	}
	if streamed == 0 {
		t.Errorf("no agent's log says it streamed on across the new timeline (%q)", logStreamingOn)
	}
	s.checkNoReplay(ctx)
}

// Scenario: the primary's container is killed under load. Patroni promotes
// the replica, which has a copy of the slot; the agent reconnects to it and
// either streams on (its checkpoint is on the new timeline's history) or,
// when it had applied a change the replica never received, copies again.
// Either way the store ends equal to the database and the log names the
// path.
func TestPatroniFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newPatroniStack(t, ctx)
	l := startLoad(t, s, 16)
	pause(3 * time.Second)

	s.promote(ctx, "failover", "the primary was killed", s.FailoverPostgres, 90*time.Second)

	l.finish(t)
	stopped := time.Now()
	s.converge(ctx, 60*time.Second)
	t.Logf("failover: store equal %v after the load stopped", time.Since(stopped).Round(time.Millisecond))
	s.agentRunning(ctx)
	path := s.failoverPath(ctx)
	t.Logf("failover: the agent's path: %s", path)
	s.logPatroniSlotLines(ctx)
	s.checkNoReplay(ctx)
}

// failoverPath reads from the agent's log which way it went after a
// promotion, failing the test when the log names none.
func (s *stack) failoverPath(ctx context.Context) string {
	s.t.Helper()
	switch {
	case s.agentLogCount(ctx, logHistoryResync) > 0:
		return "copied again (its checkpoint was past the new timeline's fork)"
	case s.agentLogCount(ctx, logSlotMissing) > 0:
		return "copied again (no slot on the new primary)"
	case s.agentLogCount(ctx, logStreamingOn) > 0:
		if n := s.agentLogCount(ctx, logInitialSync); n != 1 {
			s.t.Errorf("the agent streamed on yet copied the tables %d times", n)
		}
		return "streamed on from Patroni's copy of the slot, no copy"
	}
	s.t.Fatalf("the agent's log names no path across the failover")
	return ""
}

// Scenario: two agents (one streams, one waits for the lock) on a Patroni
// cluster under load. The primary is killed; Patroni promotes the replica
// and the agents converge on it. The old primary rejoins as a replica
// (Patroni rewinds it with pg_rewind) and gets a copy of the slot; then the
// new primary is killed too, and the cluster fails back to the old one:
// the agents converge again.
func TestPatroniFailback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newPatroniStack(t, ctx)
	b := s.standbyAgent(ctx)
	l := startLoad(t, s, 17)
	pause(3 * time.Second)

	for round, what := range []string{"failover", "failback"} {
		s.promote(ctx, what, "the primary was killed", s.FailoverPostgres, 90*time.Second)
		if round == 0 {
			began := time.Now()
			s.must(s.RejoinPostgres(ctx))
			t.Logf("the old primary streams as a replica, its copy of the slot safe, %v after its start", time.Since(began).Round(time.Millisecond))
			s.logSlots(ctx, "after the rejoin")
		}
	}

	l.finish(t)
	s.converge(ctx, 60*time.Second)
	active, _ := s.waitRoles(ctx, "", 30*time.Second)
	t.Logf("at the end %s streams", active)
	// After each promotion whichever agent takes the lock first on the
	// new primary names its path: two promotions, two lines in all.
	paths, copies := 0, 0
	for _, a := range []*harness.Process{s.Agent(), b} {
		log := agentLog(ctx, t, a)
		t.Logf("%s: %d initial syncs, streamed on across a new timeline %d times, copied after a history change %d times, after a missing slot %d times",
			a.Name(), strings.Count(log, logInitialSync), strings.Count(log, logStreamingOn), strings.Count(log, logHistoryResync), strings.Count(log, logSlotMissing))
		paths += strings.Count(log, logStreamingOn) + strings.Count(log, logHistoryResync) + strings.Count(log, logSlotMissing)
		copies += strings.Count(log, logInitialSync)
	}
	if paths < 2 {
		t.Errorf("the agents' logs name %d paths across two promotions; want 2 or more", paths)
	}
	t.Logf("initial syncs in all: %d (1: no copy across both promotions)", copies)
	for _, a := range []*harness.Process{s.Agent(), b} {
		if running, err := a.Running(ctx); err != nil || !running {
			t.Errorf("agent container %s: running %v, %v", a.Name(), running, err)
		}
	}
	s.logPatroniSlotLines(ctx)
	s.checkNoReplay(ctx)
}

// logPatroniSlotLines logs what each Patroni member's log says about
// replication slots: what Patroni did to the agent's slot.
func (s *stack) logPatroniSlotLines(ctx context.Context) {
	s.t.Helper()
	for _, m := range s.Patroni().Members {
		b, err := m.Logs(ctx)
		if err != nil {
			s.t.Logf("%s: %v", m.Name, err)
			continue
		}
		// Patroni's own lines ("2026-… 12:00:00,123 INFO: …"), not
		// PostgreSQL's, each kind once.
		var lines []string
		seen := map[string]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			_, msg, ok := strings.Cut(line, ",")
			if !ok || len(msg) < 4 || !strings.Contains(msg[:4], " ") {
				continue
			}
			msg = msg[4:]
			low := strings.ToLower(msg)
			if !strings.Contains(low, "slot") && !strings.Contains(low, "rewind") && !strings.Contains(low, "promot") {
				continue
			}
			if !seen[msg] {
				seen[msg] = true
				lines = append(lines, line)
			}
		}
		if len(lines) > 30 {
			lines = append(lines[:30], "…")
		}
		s.t.Logf("Patroni %s on slots:\n%s", m.Name, strings.Join(lines, "\n"))
	}
}

// agentLog is a's log.
func agentLog(ctx context.Context, t *testing.T, a *harness.Process) string {
	b, err := a.Log(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// probeSlot is a logical slot Patroni neither knows (slots:) nor ignores
// (ignore_slots:).
const probeSlot = "lw_probe_unknown"

// logProbeSlot logs whether each running member has probeSlot.
func (s *stack) logProbeSlot(ctx context.Context, when string) map[string]bool {
	s.t.Helper()
	p := s.Patroni()
	has := map[string]bool{}
	for i, m := range p.Members {
		if running, err := m.Running(ctx); err != nil || !running {
			continue
		}
		st, err := p.Slot(ctx, i, probeSlot)
		if err != nil {
			s.t.Logf("%s: %v", m.Name, err)
			continue
		}
		has[m.Name] = st.Exists
	}
	s.t.Logf("unknown slot %s %s: %v", probeSlot, when, has)
	return has
}
