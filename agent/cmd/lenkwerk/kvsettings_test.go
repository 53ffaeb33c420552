package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// tripwire notices what a hostile store URL would make a command do: a
// connection to a listener on 127.0.0.2:2379 (etcd's default port, the one
// a host injected into kvstore_config reaches) and a read of a "password
// file", a FIFO whose opening by a reader the tripwire sees.
type tripwire struct {
	conns atomic.Int64
	ln    net.Listener
}

func newTripwire(t *testing.T) *tripwire {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:2379")
	if err != nil {
		t.Fatalf("tripwire listener on 127.0.0.2:2379: %v", err)
	}
	tw := &tripwire{ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tw.conns.Add(1)
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return tw
}

// secretFile is a FIFO standing for a password file: read reports whether
// anything opened it for reading (and was handed the secret).
type secretFile struct {
	path   string
	opened chan struct{}
}

const fifoSecret = "s3cret-from-the-password-file"

func newSecretFile(t *testing.T) *secretFile {
	t.Helper()
	dir := t.TempDir()
	// The agent may run as another user (it does not: same binary, same
	// user), but the FIFO must be reachable like a real file.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &secretFile{path: filepath.Join(dir, "password"), opened: make(chan struct{})}
	if err := syscall.Mkfifo(f.path, 0o644); err != nil {
		t.Fatal(err)
	}
	var closing atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		// Opening a FIFO for writing blocks until a reader opens it.
		w, err := os.OpenFile(f.path, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer w.Close()
		if closing.Load() {
			return // the cleanup's own open below
		}
		close(f.opened)
		_, _ = w.WriteString(fifoSecret + "\n")
	})
	t.Cleanup(func() {
		closing.Store(true)
		if r, err := os.OpenFile(f.path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			defer r.Close()
		}
		wg.Wait()
	})
	return f
}

func (f *secretFile) read() bool {
	select {
	case <-f.opened:
		return true
	default:
		return false
	}
}

// hostileKVConfigs are kvstore_config values a lenkwerk_config member might
// write to point the agents and storage nodes elsewhere with the operator's
// secrets; FILE stands for the password file's path.
var hostileKVConfigs = []struct{ name, config, problem string }{
	{"query in host", `{"host": "127.0.0.2?password-file=FILE&username=u", "port": 2379}`, "host"},
	{"user info in host", `{"host": "u@127.0.0.2", "port": 2379}`, "host"},
	{"path in host", `{"host": "127.0.0.2/x?password-file=FILE&username=u", "port": 2379}`, "host"},
	{"fragment in host", `{"host": "127.0.0.2#x", "port": 2379}`, "host"},
	{"query in port", `{"host": "127.0.0.2", "port": "2379?password-file=FILE&username=u"}`, "port"},
	{"options", `{"host": "127.0.0.2", "port": 2379, "password-file": "FILE", "username": "u"}`, `"password-file"`},
}

// Hostile kvstore_config values, written by a lenkwerk_config member, are
// refused by the agent (from storage.config) and by follow (from its local
// copy) with an error naming the row: no password file is read, no
// connection is made, and the operator's etcd password (in the
// environment) goes nowhere.
func TestHostileKVConfig(t *testing.T) {
	bin := lenkwerkBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, admin := migratedCluster(t, ctx, pgtest.Options{})
	execSQL(t, ctx, admin, `CREATE ROLE lenkwerk_config_login LOGIN IN ROLE lenkwerk_config`)
	configURL := withOptions(withURLUser(t, admin, "lenkwerk_config_login"), "-c role=lenkwerk_config")
	agentURL := withURLUser(t, admin, "lenkwerk_agent")
	local := c.NewDatabase(t)
	if err := migrations.Up(ctx, local, migrations.Options{Copy: true}); err != nil {
		t.Fatal(err)
	}
	tw := newTripwire(t)

	// run runs the command with a short deadline: a command that was not
	// refused at once would read, connect and retry until killed.
	run := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(rctx, bin, args...)
		cmd.Env = append(os.Environ(), "LENKWERK_KV_URL=", "LENKWERK_ETCD_PASSWORD=env-s3cret")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		if rctx.Err() != nil {
			err = fmt.Errorf("still running after 20s: %w", rctx.Err())
		}
		return string(out), err
	}
	check := func(t *testing.T, f *secretFile, before int64, row, problem, out string, err error) {
		t.Helper()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("want exit status 1, got %v", err)
		}
		if !strings.Contains(out, row) || !strings.Contains(out, problem) {
			t.Errorf("the error names neither the row %q nor the problem %q", row, problem)
		}
		for _, secret := range []string{f.path, fifoSecret, "env-s3cret"} {
			if strings.Contains(out, secret) {
				t.Errorf("output shows %q", secret)
			}
		}
		if f.read() {
			t.Error("the password file was read")
		}
		if n := tw.conns.Load() - before; n != 0 {
			t.Errorf("%d connection(s) to 127.0.0.2:2379", n)
		}
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}

	for _, hc := range hostileKVConfigs {
		t.Run("agent/"+hc.name, func(t *testing.T) {
			f := newSecretFile(t)
			cfg := strings.ReplaceAll(hc.config, "FILE", f.path)
			execSQL(t, ctx, configURL,
				`SELECT storage.save_config('kvstore_type', '"etcd"')`,
				`SELECT storage.save_config('kvstore_config', '`+cfg+`')`)
			before := tw.conns.Load()
			out, err := run(t, "agent", "--database-url", agentURL)
			check(t, f, before, "storage.config kvstore_config", hc.problem, out, err)
		})
		t.Run("follow/"+hc.name, func(t *testing.T) {
			f := newSecretFile(t)
			cfg := strings.ReplaceAll(hc.config, "FILE", f.path)
			execSQL(t, ctx, local,
				`DELETE FROM storage.config`,
				`INSERT INTO storage.config (key, value) VALUES ('kvstore_type', '"etcd"'), ('kvstore_config', '`+cfg+`')`)
			before := tw.conns.Load()
			out, err := run(t, "follow", "--database-url", local, "--migrate=false")
			check(t, f, before, "local copy's storage.config kvstore_config", hc.problem, out, err)
		})
	}

	// The tripwire works: the operator's own --kv with a password file
	// reads it and connects.
	t.Run("control", func(t *testing.T) {
		f := newSecretFile(t)
		before := tw.conns.Load()
		cmd := exec.Command(bin, "kv", "--kv", "etcd://127.0.0.2:2379?dial-timeout=1s&username=u&password-file="+url.QueryEscape(f.path), "get", "/x")
		cmd.Env = append(os.Environ(), "LENKWERK_KV_URL=")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		out, _ := cmd.CombinedOutput()
		if !f.read() || tw.conns.Load() == before {
			t.Errorf("the tripwire saw read %v, %d connection(s); output:\n%s", f.read(), tw.conns.Load()-before, out)
		}
	})
}

// migratedCluster starts a private cluster (the migrations' roles are
// cluster-wide) and returns it with a migrated database's superuser URL.
func migratedCluster(t *testing.T, ctx context.Context, opts pgtest.Options) (*pgtest.Cluster, string) {
	t.Helper()
	c := pgtest.StartCluster(t, opts)
	admin := c.NewDatabase(t)
	if err := migrations.Up(ctx, admin, migrations.Options{}); err != nil {
		t.Fatal(err)
	}
	return c, admin
}

// execSQL runs statements on url.
func execSQL(t *testing.T, ctx context.Context, url string, sqls ...string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// withURLUser returns raw with another user.
func withURLUser(t *testing.T, raw, user string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

func TestKVURLFromSettings(t *testing.T) {
	for _, c := range []struct {
		typ, cfg, want string
	}{
		{`"etcd"`, `{"host": "kv1", "port": 2379}`, "etcd://kv1:2379"},
		{`"etcd"`, `{"host": "::1", "port": "2380"}`, "etcd://[::1]:2380"},
		{`"etcd"`, `{"host": "etcd-1.bagger_net.example.", "port": 1}`, ""}, // empty label
		{`"etcd"`, `{"host": "etcd-1.bagger_net.example", "port": 65535}`, "etcd://etcd-1.bagger_net.example:65535"},
		{`"etcd"`, `{"host": "10.1.2.3"}`, "etcd://10.1.2.3:2379"},
		{`"etcd"`, ``, "etcd://127.0.0.1:2379"},
		{`"etcd"`, `null`, "etcd://127.0.0.1:2379"},
		{`"etcd"`, `{}`, "etcd://127.0.0.1:2379"},
		{`"consul"`, `{}`, ""},
		{``, `{}`, ""},
		{`{"x": 1}`, `{}`, ""},
		{`"etcd"`, `{"port": "x"}`, ""},
		{`"etcd"`, `{"port": 0}`, ""},
		{`"etcd"`, `{"port": 65536}`, ""},
		{`"etcd"`, `{"port": -1}`, ""},
		{`"etcd"`, `{"port": 2379.5}`, ""},
		{`"etcd"`, `{"port": "+2379"}`, ""},
		{`"etcd"`, `{"host": 1}`, ""},
		{`"etcd"`, `[]`, ""},
		{`"etcd"`, `"etcd://h:1"`, ""},
		{`"etcd"`, `{"host": ""}`, ""},
		{`"etcd"`, `{"host": "h:2379"}`, ""},
		{`"etcd"`, `{"host": "[::1]"}`, ""},
		{`"etcd"`, `{"host": "fe80::1%eth0"}`, ""},
		{`"etcd"`, `{"host": "h%2f"}`, ""},
		{`"etcd"`, `{"host": "u:pw@h"}`, ""},
		{`"etcd"`, `{"host": "h/p"}`, ""},
		{`"etcd"`, `{"host": "h?tls=false"}`, ""},
		{`"etcd"`, `{"host": "h#f"}`, ""},
		{`"etcd"`, `{"host": "h h"}`, ""},
		{`"etcd"`, `{"host": "h\u001b[2J"}`, ""},
		{`"etcd"`, `{"host": "h\n"}`, ""},
		{`"etcd"`, `{"host": "h,evil"}`, ""},
		{`"etcd"`, `{"host": "-h"}`, ""},
		{`"etcd"`, `{"host": "ä.example"}`, ""},
		{`"etcd"`, `{"host": "` + strings.Repeat("a", 64) + `"}`, ""},
		{`"etcd"`, `{"host": "` + strings.Repeat("a.", 127) + `a"}`, ""},
		{`"etcd"`, `{"host": "h", "username": "u"}`, ""},
		{`"etcd"`, `{"host": "h", "tls": true}`, ""},
		{`"etcd"`, `{"host": "h", "ca-file": "/etc/passwd"}`, ""},
	} {
		var typ, cfg []byte
		if c.typ != "" {
			typ = []byte(c.typ)
		}
		if c.cfg != "" {
			cfg = []byte(c.cfg)
		}
		got, err := kvURLFromSettings(sourceSettings, typ, cfg)
		if (err == nil) != (c.want != "") || got != c.want {
			t.Errorf("kvURLFromSettings(%s, %s) = %q, %v; want %q", c.typ, c.cfg, got, err, c.want)
			continue
		}
		if err == nil {
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "storage.config kvstore_") {
			t.Errorf("kvURLFromSettings(%s, %s): %q does not name the row", c.typ, c.cfg, msg)
		}
		for _, leak := range []string{"pw", "/etc/passwd", "tls=false", "evil", "\x1b", "\n"} {
			if strings.Contains(c.cfg, leak) && strings.Contains(msg, leak) {
				t.Errorf("kvURLFromSettings(%s, %s): %q echoes %q", c.typ, c.cfg, msg, leak)
			}
		}
	}
}
