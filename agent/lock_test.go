package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A role that may only connect (CONNECT is PUBLIC's) cannot take the
// agents' advisory lock, so it cannot hold an agent off as a standby: the
// agent, logged in as lenkwerk_agent, streams.
func TestAgentLockOnlyForAgentRole(t *testing.T) {
	e := newEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	role := randomName("lw_intruder_")
	e.exec(`CREATE ROLE ` + role + ` LOGIN`)
	t.Cleanup(func() { _, _ = e.db.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
	intruder, err := pgx.Connect(ctx, asUser(t, e.url, role))
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close(context.Background())
	for _, f := range []string{"pg_advisory_lock", "pg_advisory_lock_shared"} {
		_, err := intruder.Exec(ctx, fmt.Sprintf("SELECT %s(%d, hashtext('%s'))", f, advisoryLockSpace, e.slot))
		if err == nil {
			t.Errorf("%s took %s on the agents' lock", role, f)
		}
	}
	cfg := e.config()
	cfg.DatabaseURL = asUser(t, e.url, "lenkwerk_agent")
	a := e.start(cfg)
	waitFor(t, "the agent to stream as the active agent", 30*time.Second, func() bool {
		st := a.Status()
		return st.Active && st.Streaming
	})
}
