package containers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/harness"
)

// The agent image runs as a non-root user and needs no writable
// filesystem (issue 8): the agent on a read-only root filesystem syncs
// and streams, and none of its processes runs as root.
func TestAgentReadOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, 1, harness.WithReadOnlyAgent())
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.save_config('retention', '"30d"')`)
	s.startAgent()
	agent := s.Agent().Container()

	info, err := agent.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.HostConfig.ReadonlyRootfs {
		t.Fatal("the agent container's root filesystem is writable: the test would prove nothing")
	}
	if u := info.Config.User; u == "" || u == "0" || u == "root" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:") {
		t.Errorf("the agent image runs as user %q; want a non-root user", u)
	}

	s.converge(ctx, 60*time.Second) // the initial sync
	s.exec(ctx, `SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db1'), 3)`)
	s.exec(ctx, `SELECT storage.save_servermap('{"nodes": [1]}'), storage.save_config('retention', '"7d"')`)
	s.converge(ctx, 30*time.Second) // streaming

	// The uid as the host's kernel sees it: the image's USER could be
	// overridden, a setuid binary could change it.
	titles, procs, err := agent.Top(ctx, "-o", "pid,uid,gid,comm")
	if err != nil {
		t.Fatal(err)
	}
	uidCol := -1
	for i, title := range titles {
		if title == "UID" {
			uidCol = i
		}
	}
	if uidCol < 0 || len(procs) == 0 {
		t.Fatalf("docker top: titles %q, %d processes: no UID column or no process", titles, len(procs))
	}
	for _, p := range procs {
		if uid := strings.TrimSpace(p[uidCol]); uid == "0" || uid == "root" {
			t.Errorf("agent process %q runs as root", p)
		}
	}
	t.Logf("agent processes (%s): %q", strings.Join(titles, " "), procs)

	s.agentRunning(ctx)
	for _, bad := range []string{"read-only file system", "permission denied"} {
		if n := s.agentLogCount(ctx, bad); n > 0 {
			t.Errorf("the agent logged %q %d times: it tries to write to its filesystem", bad, n)
		}
	}
}
