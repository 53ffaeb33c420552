package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

// TestBinary runs the tests of the built command
// (exit status, signals, child processes).
func TestBinary(t *testing.T) {
	bin := lenkwerkBinary(t)
	t.Run("status", func(t *testing.T) { testStatusExitStatus(t, bin) })
	for _, kv := range []string{"etcd", "postgres", "mem"} {
		t.Run("dev-"+kv, func(t *testing.T) { testDev(t, bin, kv) })
	}
	t.Run("dev-dir", func(t *testing.T) { testDevDir(t, bin) })
	t.Run("dev-access", func(t *testing.T) { testDevAccess(t, bin) })
	t.Run("dev-stdout-closed", func(t *testing.T) { testDevStdoutClosed(t, bin) })
	t.Run("dev-killed", func(t *testing.T) { testDevKilled(t, bin) })
}

// devProcess is a running `lenkwerk dev`, its output lines and what it
// printed about itself.
type devProcess struct {
	cmd       *exec.Cmd
	stdout    io.ReadCloser
	lines     chan string
	seen      []string
	stderr    strings.Builder
	exited    chan error
	adminURL  string
	configURL string
	passFile  string
	dataDir   string
	pgPID     int
}

// startDev starts `lenkwerk dev args...` and waits until it watches the
// tree. Whatever happens, the command and the PostgreSQL it started are
// stopped when the test ends.
func startDev(t *testing.T, bin string, args ...string) *devProcess {
	t.Helper()
	p := &devProcess{cmd: exec.Command(bin, append([]string{"dev"}, args...)...), lines: make(chan string, 100), exited: make(chan error, 1)}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdout = stdout
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		// After a failure: stop the command, and whatever it left behind.
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(os.Interrupt)
			go p.drainAndWait()
			select {
			case <-p.exited:
			case <-time.After(20 * time.Second):
				_ = p.cmd.Process.Kill()
			}
		}
		if p.pgPID != 0 && processAlive(p.pgPID) {
			_ = syscall.Kill(p.pgPID, syscall.SIGQUIT) // immediate shutdown
		}
		if p.dataDir != "" && strings.HasPrefix(filepath.Base(p.dataDir), "lenkwerk-dev-") {
			os.RemoveAll(p.dataDir)
		}
		if t.Failed() {
			t.Logf("stderr of lenkwerk dev %q:\n%s", args, p.stderr.String())
		}
	})

	p.adminURL = p.waitLine(t, regexp.MustCompile(`^\s*admin:\s+(\S+)$`), 50*time.Second)[1]
	p.configURL = p.waitLine(t, regexp.MustCompile(`^\s*lenkwerk_config:\s+(\S+)$`), 5*time.Second)[1]
	p.dataDir = p.waitLine(t, regexp.MustCompile(`^\s*data:\s+(\S+) \((deleted on exit|kept)\)$`), 5*time.Second)[1]
	p.passFile = p.waitLine(t, regexp.MustCompile(`^\s*export PGPASSFILE=(\S+)$`), 5*time.Second)[1]
	// The printed URLs hold no password: psql and lenkwerk find it there.
	t.Setenv("PGPASSFILE", p.passFile)
	pidFile, err := os.ReadFile(filepath.Join(p.dataDir, "postgres", "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if p.pgPID, err = strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0]); err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return p
}

// waitLine returns the first output line matching re.
func (p *devProcess) waitLine(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("lenkwerk dev ended before printing %q; output:\n%s", re, strings.Join(p.seen, "\n"))
			}
			p.seen = append(p.seen, line)
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no line matching %q after %v; output:\n%s", re, timeout, strings.Join(p.seen, "\n"))
		}
	}
}

func (p *devProcess) drainAndWait() {
	for range p.lines { // so the command never blocks writing stdout
	}
	p.exited <- p.cmd.Wait()
}

// interrupt sends SIGINT and checks that the command exits with status 0
// and that its PostgreSQL is gone.
func (p *devProcess) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go p.drainAndWait()
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("lenkwerk dev after SIGINT: %v\nstderr:\n%s", err, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("lenkwerk dev still running 20s after SIGINT")
	}
	// pg_ctl stop returns once postmaster.pid is gone, a moment before
	// the process itself; its parent (pid 1) may reap it later still.
	for deadline := time.Now().Add(10 * time.Second); processAlive(p.pgPID); {
		if time.Now().After(deadline) {
			t.Fatalf("postgres (pid %d) still running 10s after lenkwerk dev exited", p.pgPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func configExec(t *testing.T, configURL string, sqls ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, configURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var role string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil || role != "lenkwerk_config" {
		t.Fatalf("config URL connects as %q (%v), want lenkwerk_config", role, err)
	}
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

var (
	watchingLine = regexp.MustCompile(`^Watching / for changes`)
	offlineLine  = regexp.MustCompile(`^\d+\tput\t/PostgresInstance/db1/5432\t.*"status":0`)
	onlineLine   = regexp.MustCompile(`^\d+\tput\t/PostgresInstance/db1/5432\t.*"status":3`)
)

func testDev(t *testing.T, bin, kv string) {
	p := startDev(t, bin, "--kv", kv)
	p.waitLine(t, watchingLine, 10*time.Second)
	configExec(t, p.configURL,
		"SELECT storage.register_pg_instance('db1', 5432, 'bagger')",
		"SELECT storage.set_pg_instance_status(1, 3)")
	p.waitLine(t, offlineLine, 10*time.Second)
	p.waitLine(t, onlineLine, 10*time.Second)
	p.interrupt(t)
	if _, err := os.Stat(p.dataDir); !os.IsNotExist(err) {
		t.Errorf("data directory %s left behind: %v", p.dataDir, err)
	}
}

// With --dir the data stays, and the next run starts from it.
func testDevDir(t *testing.T, bin string) {
	tmp := t.TempDir()
	// As root the server runs as postgres, which must enter the directory.
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(tmp, "dev")
	p := startDev(t, bin, "--dir", dir)
	p.waitLine(t, watchingLine, 10*time.Second)
	configExec(t, p.configURL, "SELECT storage.register_pg_instance('db1', 5432, 'bagger')")
	p.waitLine(t, offlineLine, 10*time.Second)
	p.interrupt(t)
	if _, err := os.Stat(filepath.Join(dir, "postgres", "data", "PG_VERSION")); err != nil {
		t.Fatalf("--dir: data not kept: %v", err)
	}

	p = startDev(t, bin, "--dir", dir)
	p.waitLine(t, regexp.MustCompile(`^/PostgresInstance/db1/5432\t.*"status":0`), 50*time.Second) // the listed tree
	p.waitLine(t, watchingLine, 10*time.Second)
	configExec(t, p.configURL, "SELECT storage.set_pg_instance_status(1, 3)")
	p.waitLine(t, onlineLine, 10*time.Second)
	p.interrupt(t)
}

// waitGone waits until dev's PostgreSQL has exited and its temporary data
// directory is gone, at most within.
func (p *devProcess) waitGone(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for processAlive(p.pgPID) || exists(p.dataDir) {
		if time.Now().After(deadline) {
			t.Fatalf("%v after lenkwerk dev ended: postgres (pid %d) running %v, data directory %s left %v\nstderr:\n%s",
				within, p.pgPID, processAlive(p.pgPID), p.dataDir, exists(p.dataDir), p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// `lenkwerk dev | tee log`, then Ctrl-C: the reader of stdout is gone
// first. dev is not killed by SIGPIPE at its next write, before it stopped
// its server: it cleans up itself, and no server and no data directory
// are left. Both orders: a change of the tree to print (the write fails,
// dev ends), and a SIGINT with nothing to print.
func testDevStdoutClosed(t *testing.T, bin string) {
	for _, how := range []string{"write", "sigint"} {
		t.Run(how, func(t *testing.T) {
			p := startDev(t, bin, "--kv", "mem")
			p.waitLine(t, watchingLine, 10*time.Second)
			p.stdout.Close()
			if how == "write" {
				configExec(t, p.configURL, "SELECT storage.register_pg_instance('db1', 5432, 'bagger')")
			} else if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			go p.drainAndWait()
			select {
			case <-p.exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("lenkwerk dev still running 30s after its stdout closed (%s)", how)
			}
			if ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
				t.Fatalf("lenkwerk dev was killed by %v (stdout closed), want it to clean up and exit\nstderr:\n%s", ws.Signal(), p.stderr.String())
			}
			if how == "sigint" && !p.cmd.ProcessState.Success() {
				t.Errorf("lenkwerk dev after SIGINT: %v, want exit status 0 (unwritable output during shutdown is no failure)\nstderr:\n%s", p.cmd.ProcessState, p.stderr.String())
			}
			p.waitGone(t, 20*time.Second)
			// dev cleaned up itself, not its watchdog.
			if want := "lenkwerk dev: removed " + p.dataDir; !strings.Contains(p.stderr.String(), want) {
				t.Errorf("stderr does not say %q:\n%s", want, p.stderr.String())
			}
		})
	}
}

// A dev killed outright (SIGKILL) leaves no server running: its watchdog
// stops it and removes the temporary data directory.
func testDevKilled(t *testing.T, bin string) {
	p := startDev(t, bin, "--kv", "mem")
	p.waitLine(t, watchingLine, 10*time.Second)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	go p.drainAndWait()
	p.waitGone(t, 30*time.Second)
	if !strings.Contains(p.stderr.String(), "watchdog: dev (pid") {
		t.Errorf("stderr does not show the watchdog at work:\n%s", p.stderr.String())
	}
}

// processAlive reports whether process pid exists and is not a zombie.
func processAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil // no /proc: zombies count as alive
	}
	// "pid (comm) state …"; comm may contain spaces and parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// dev's server answers only its user: its lenkwerk_config URL is a real
// login role that cannot become the superuser, a TCP connection without
// the run's password is refused (trust let any local user run COPY … TO
// PROGRAM as the server's OS user), and another OS user cannot use its
// socket.
func testDevAccess(t *testing.T, bin string) {
	p := startDev(t, bin, "--kv", "mem")
	p.waitLine(t, watchingLine, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if fi, err := os.Stat(p.passFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("password file %s: %v, mode %v; want 0600", p.passFile, err, fi.Mode())
	}
	for _, u := range []string{p.adminURL, p.configURL} {
		if regexp.MustCompile(`//[^/@]*:[^/@]*@`).MatchString(u) {
			t.Errorf("printed URL %s holds a password", u)
		}
	}

	conn, err := pgx.Connect(ctx, p.configURL)
	if err != nil {
		t.Fatalf("lenkwerk_config URL: %v", err)
	}
	defer conn.Close(context.Background())
	var session, current string
	var super bool
	if err := conn.QueryRow(ctx, `SELECT session_user, current_user, rolsuper FROM pg_roles WHERE rolname = session_user`).Scan(&session, &current, &super); err != nil {
		t.Fatal(err)
	}
	if session == "postgres" || super || current != "lenkwerk_config" {
		t.Errorf("lenkwerk_config URL: session user %s (superuser %v), current user %s; want a non-superuser login acting as lenkwerk_config", session, super, current)
	}
	if _, err := conn.Exec(ctx, `SET ROLE postgres`); err == nil {
		t.Error("the lenkwerk_config URL can SET ROLE postgres")
	}
	if _, err := conn.Exec(ctx, `RESET ROLE; SELECT storage.save_config('dev_access', '1')`); err != nil {
		t.Errorf("lenkwerk_config URL cannot configure: %v", err)
	}

	// No password: every role is refused over TCP.
	for _, u := range []string{p.adminURL, p.configURL} {
		cfg, err := pgx.ParseConfig(u)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = ""
		if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
			c.Close(context.Background())
			t.Errorf("%s: connected without a password", u)
		}
	}

	// Another OS user, through the socket and over TCP, even as the
	// superuser: refused before any SQL runs.
	bindir, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody to try as: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	// A directory the server's OS user can write to (t.TempDir's parent
	// is private to this user).
	markerDir, err := os.MkdirTemp("", "lenkwerk-dev-access-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(markerDir)
	if err := os.Chmod(markerDir, 0o777); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(markerDir, "copied")
	socketDir := filepath.Join(p.dataDir, "postgres")
	port := regexp.MustCompile(`:(\d+)/`).FindStringSubmatch(p.adminURL)[1]
	for _, host := range []string{socketDir, "127.0.0.1"} {
		cmd := exec.CommandContext(ctx, filepath.Join(bindir, "psql"), "-w", "-X", "-h", host, "-p", port, "-U", "postgres", "-d", "lenkwerk",
			"-c", "COPY (SELECT 1) TO PROGRAM 'touch "+marker+"'")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "PGPASSFILE=/nonexistent/pgpass", "HOME=/nonexistent"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		if err == nil || !regexp.MustCompile(`Permission denied|no password supplied|password authentication failed`).Match(out) {
			t.Errorf("user nobody through %s: %v, want refused before any SQL; psql said:\n%s", host, err, out)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Errorf("user nobody ran a program as the server's OS user through %s", host)
			os.Remove(marker)
		}
	}
	p.interrupt(t)
}
