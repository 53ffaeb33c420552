package secure

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/jackc/pgx/v5"
)

// TestSecretsNotPrinted runs the lenkwerk binary (agent, migrate, kv) with
// wrong passwords for PostgreSQL and etcd, in URLs, in URLs given through
// the environment and in PGPASSWORD / LENKWERK_ETCD_PASSWORD. Each run must
// show that the server refused the password (so the password was used) —
// or, for a password in a flag, that lenkwerk refused the flag — and never
// print the password.
func TestSecretsNotPrinted(t *testing.T) {
	bin := buildLenkwerk(t)
	p := newPKI(t)
	pg := startPG(t, p)
	etcd := startEtcd(t, p)
	ctx := testContext(t, 60*time.Second)
	admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, readerUser, readerPass)); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)

	// withPassword puts pw into a URL's user info.
	withPassword := func(raw, user, pw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(user, pw)
		return u.String()
	}
	pgNoPass := pg.url(readerUser, certs.Pair{})
	etcdNoPass := etcd.url(t, p.etcdAgent, "", "")
	goodPG := pg.url("postgres", p.postgres)
	const pgRefused, etcdRefused = "password authentication failed", "authentication failed"
	// A password in a flag is refused before anything connects: the command
	// line is in every local user's process listing.
	const flagRefused = "is visible to every local user"

	for _, tc := range []struct {
		name   string
		args   []string
		env    []string
		secret string
		want   string // the server's (or lenkwerk's) refusal, in the output
		runs   bool   // the command keeps retrying: stop it once refused
	}{
		{"agent db password in --database-url", []string{"agent", "--database-url", withPassword(pgNoPass, readerUser, "Wr0ng-pg-flag"), "--kv", "mem://s1"}, nil, "Wr0ng-pg-flag", flagRefused, false},
		{"agent db password in LENKWERK_DATABASE_URL", []string{"agent", "--kv", "mem://s2"}, []string{"LENKWERK_DATABASE_URL=" + withPassword(pgNoPass, readerUser, "Wr0ng-pg-env-url")}, "Wr0ng-pg-env-url", pgRefused, true},
		{"agent db password in PGPASSWORD", []string{"agent", "--database-url", pgNoPass, "--kv", "mem://s3"}, []string{"PGPASSWORD=Wr0ng-pg-pgpassword"}, "Wr0ng-pg-pgpassword", pgRefused, true},
		{"agent etcd password in --kv", []string{"agent", "--database-url", goodPG, "--kv", withPassword(etcdNoPass, etcdUser, "Wr0ng-etcd-flag")}, nil, "Wr0ng-etcd-flag", flagRefused, false},
		{"agent etcd password in LENKWERK_ETCD_PASSWORD", []string{"agent", "--database-url", goodPG, "--kv", etcdNoPass + "&username=" + etcdUser}, []string{"LENKWERK_ETCD_PASSWORD=Wr0ng-etcd-env"}, "Wr0ng-etcd-env", etcdRefused, true},
		{"migrate", []string{"migrate", "--database-url", withPassword(pgNoPass, readerUser, "Wr0ng-pg-migrate"), "version"}, nil, "Wr0ng-pg-migrate", flagRefused, false},
		{"migrate LENKWERK_DATABASE_URL", []string{"migrate", "up"}, []string{"LENKWERK_DATABASE_URL=" + withPassword(pgNoPass, readerUser, "Wr0ng-pg-migrate-env")}, "Wr0ng-pg-migrate-env", pgRefused, false},
		{"kv pgkv", []string{"kv", "--kv", withPassword(pgNoPass, readerUser, "Wr0ng-pgkv-kv") + "&schema=lenkwerk_kv", "ls", "/"}, nil, "Wr0ng-pgkv-kv", flagRefused, false},
		{"kv etcd", []string{"kv", "--kv", withPassword(etcdNoPass, etcdUser, "Wr0ng-etcd-kv"), "ls", prefix}, nil, "Wr0ng-etcd-kv", flagRefused, false},
		{"kv etcd LENKWERK_KV_URL", []string{"kv", "ls", prefix}, []string{"LENKWERK_KV_URL=" + withPassword(etcdNoPass, etcdUser, "Wr0ng-etcd-kv-env")}, "Wr0ng-etcd-kv-env", etcdRefused, false},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			out := runLenkwerk(t, bin, tc.args, tc.env, tc.want, tc.runs)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("output lacks the server's refusal %q:\n%s", tc.want, out)
			}
			for _, form := range []string{tc.secret, url.QueryEscape(tc.secret)} {
				if strings.Contains(out, form) {
					t.Fatalf("output shows the password %q:\n%s", tc.secret, out)
				}
			}
		})
	}
}

// buildLenkwerk builds the lenkwerk command into the test's directory.
func buildLenkwerk(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lenkwerk")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/bagger/lenkwerk/agent/cmd/lenkwerk")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runLenkwerk runs bin with args and env (PG*/LENKWERK_* of the test's own
// environment removed) and returns stdout and stderr. A command that runs
// on (runs) is stopped with SIGTERM once want shows in its output, or
// after 20 s.
func runLenkwerk(t *testing.T, bin string, args, env []string, want string, runs bool) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LENKWERK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PGPASSFILE="+filepath.Join(t.TempDir(), "none"))
	cmd.Env = append(cmd.Env, env...)
	var buf testutil.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if runs {
				t.Errorf("%v ended on its own (%v); it should retry", args[0], err)
			}
			return buf.String()
		case <-tick.C:
			if runs && strings.Contains(buf.String(), want) {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				runs = false
			}
		case <-deadline:
			_ = cmd.Process.Kill()
			<-done
			return buf.String()
		}
	}
}
