package harness

import (
	"context"
	"time"
)

// teardown stops the Stack's processes, showing their output when the test
// failed, and closes its store. Start registers it after the backend's own
// Cleanup, so it runs first, before the servers go away.
func (s *Stack) teardown() {
	s.mu.Lock()
	procs := s.procs
	s.mu.Unlock()
	if s.backend == Containers {
		// Each container's own Cleanup shows its output when the
		// test failed, and removes it.
		procs = nil
	}
	if s.tb.Failed() {
		for _, p := range procs {
			s.tb.Logf("--- end of the output of %s (%s backend):\n%s", p.name, s.backend, p.tail(logTail))
		}
	}
	// Agents let go of the slot before PostgreSQL stops.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range procs {
		if err := p.stopIfRunning(ctx); err != nil {
			s.tb.Errorf("harness: stop %s: %v", p.name, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.store != nil {
		s.store.Close()
	}
}
