package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestBinary builds lenkwerk once and runs the tests of the built command
// (exit status, signals, child processes).
func TestBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "lenkwerk")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Run("status", func(t *testing.T) { testStatusExitStatus(t, bin) })
	for _, kv := range []string{"etcd", "postgres", "mem"} {
		t.Run("dev-"+kv, func(t *testing.T) { testDev(t, bin, kv) })
	}
	t.Run("dev-dir", func(t *testing.T) { testDevDir(t, bin) })
}

// devProcess is a running `lenkwerk dev`, its output lines and what it
// printed about itself.
type devProcess struct {
	cmd       *exec.Cmd
	lines     chan string
	seen      []string
	stderr    strings.Builder
	exited    chan error
	configURL string
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

	p.configURL = p.waitLine(t, regexp.MustCompile(`^\s*lenkwerk_config:\s+(\S+)$`), 50*time.Second)[1]
	p.dataDir = p.waitLine(t, regexp.MustCompile(`^\s*data:\s+(\S+) \((deleted on exit|kept)\)$`), 5*time.Second)[1]
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
