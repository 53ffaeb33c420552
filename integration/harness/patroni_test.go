package harness_test

import (
	"context"
	"errors"
	"testing"

	"github.com/bagger/lenkwerk/integration/harness"
)

// The Patroni levers need WithPatroni: on the local backend (a single
// PostgreSQL) each returns ErrUnsupported and changes nothing; the
// scenarios of integration/containers (TestPatroni*) pull them for real.
func TestPatroniLeversUnsupportedLocally(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := harness.Start(t, harness.WithBackend(harness.Local))
	levers := map[string]func(context.Context) error{
		"SwitchoverPostgres": s.SwitchoverPostgres,
		"FailoverPostgres":   s.FailoverPostgres,
		"RejoinPostgres":     s.RejoinPostgres,
	}
	for name, lever := range levers {
		if err := lever(ctx); !errors.Is(err, harness.ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%s on the local backend: %v, want ErrUnsupported", name, err)
		}
	}
	if s.Patroni() != nil {
		t.Error("Patroni() on the local backend is not nil")
	}
	// Nothing changed: the agent still mirrors a change.
	if err := s.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
}
