package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
)

// Permanent configuration errors end the agent at start with exit status 1
// and a message naming the problem, against a reachable, migrated
// database; they used to loop on "reconnecting". A template for a table
// that exists but is not published is a warning: the agent runs.
func TestConfigErrorsExitAtStart(t *testing.T) {
	bin := lenkwerkBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	_, admin := migratedCluster(t, ctx, pgtest.Options{})
	execSQL(t, ctx, admin, `CREATE TABLE public.extra (id int PRIMARY KEY, name text)`, `GRANT SELECT ON public.extra TO lenkwerk_agent`,
		`CREATE TABLE public.partial (id int PRIMARY KEY, name text)`, `GRANT SELECT ON public.partial TO lenkwerk_agent`,
		`ALTER PUBLICATION bagger_lw_storage ADD TABLE public.partial (id)`)
	agentURL := withURLUser(t, admin, "lenkwerk_agent")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"prefix dot-dot", []string{"--prefix", "/a/.."}, `".." segment`},
		{"prefix dot", []string{"--prefix", "/."}, `".." segment`},
		{"prefix invalid UTF-8", []string{"--prefix", "/a\xff"}, "UTF-8"},
		{"prefix empty last segment", []string{"--prefix", "/a//"}, "empty segment"},
		{"prefix reserved", []string{"--prefix", "/.lenkwerk"}, "reserved"},
		{"prefix inside reserved", []string{"--prefix", "/.lenkwerk/x"}, "reserved"},
		{"prefix reserved below", []string{"--prefix", "/bagger/.lenkwerk"}, "reserved"},
		{"template missing column", []string{"--key-template", "storage.config=/Config/{nokey}"}, `no column "nokey"`},
		{"template missing table", []string{"--key-template", "storage.confg=/Conf/{key}"}, "storage.confg does not exist"},
		{"template of a view", []string{"--key-template", "pg_catalog.pg_roles=/Roles/{rolname}"}, "not a table"},
		{"template column not published", []string{"--key-template", "public.partial=/Partial/{name}"}, `column "name" is not in publication bagger_lw_storage's column list`},
		{"template missing column, unpublished table", []string{"--key-template", "public.extra=/Extra/{nope}"}, `no column "nope"`},
		{"sync standby name with a space", []string{"--sync-standbys", "sb1,bad name"}, `--sync-standbys: invalid standby name "bad name"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(rctx, bin, append([]string{"agent", "--database-url", agentURL, "--kv", "mem://x"}, tc.args...)...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if rctx.Err() != nil || !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), tc.want) {
				t.Errorf("want exit status 1 at start and %q; got %v (still running: %v), output:\n%s", tc.want, err, rctx.Err() != nil, out)
			}
			t.Logf("%s", out)
		})
	}

	t.Run("unpublished table warns", func(t *testing.T) {
		p := startAgentProcess(t, bin, "unpublished", "--database-url", agentURL, "--kv", "mem://x", "--key-template", "public.extra=/Extra/{id}")
		testutil.WaitFor(t, "the warning", 30*time.Second, func() bool {
			return strings.Contains(p.out.String(), "public.extra is not in publication bagger_lw_storage")
		})
		testutil.WaitFor(t, "the agent streams", 30*time.Second, func() bool {
			return strings.Contains(p.out.String(), "streaming")
		})
		if code := p.terminate(10 * time.Second); code != 0 {
			t.Fatalf("exit status %d after SIGTERM; output:\n%s", code, p.out.String())
		}
	})
}
