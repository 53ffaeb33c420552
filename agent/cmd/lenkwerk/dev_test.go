package main

import (
	"bufio"
	"context"
	"errors"
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
	t.Run("dev-etcd", func(t *testing.T) { testDev(t, bin, "etcd") })
	t.Run("dev-postgres", func(t *testing.T) { testDev(t, bin, "postgres") })
	t.Run("dev-mem", func(t *testing.T) { testDev(t, bin, "mem") })
}

// devProcess is a running `lenkwerk dev` and its output lines.
type devProcess struct {
	cmd   *exec.Cmd
	lines chan string
	seen  []string
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

func testDev(t *testing.T, bin, kv string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.Command(bin, "dev", "--kv", kv)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &devProcess{cmd: cmd, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	exited := make(chan error, 1)
	var (
		dataDir string
		pgPID   int
	)
	t.Cleanup(func() {
		// After a failure: stop the command, and whatever it left behind.
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
		if pgPID != 0 && processAlive(pgPID) {
			_ = syscall.Kill(pgPID, syscall.SIGQUIT) // immediate shutdown
		}
		if dataDir != "" {
			os.RemoveAll(dataDir)
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})

	configURL := p.waitLine(t, regexp.MustCompile(`^\s*lenkwerk_config:\s+(\S+)$`), 50*time.Second)[1]
	dataDir = p.waitLine(t, regexp.MustCompile(`^\s*data:\s+(\S+) \(deleted on exit\)$`), 5*time.Second)[1]
	pidFile, err := os.ReadFile(filepath.Join(dataDir, "postgres", "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if pgPID, err = strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0]); err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	p.waitLine(t, regexp.MustCompile(`^Watching / for changes`), 10*time.Second)

	conn, err := pgx.Connect(ctx, configURL)
	if err != nil {
		t.Fatal(err)
	}
	var role string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil || role != "lenkwerk_config" {
		t.Fatalf("config URL connects as %q (%v), want lenkwerk_config", role, err)
	}
	for _, sql := range []string{
		"SELECT storage.register_pg_instance('db1', 5432, 'bagger')",
		"SELECT storage.set_pg_instance_status(1, 3)",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	conn.Close(ctx)
	p.waitLine(t, regexp.MustCompile(`^\d+\tput\t/PostgresInstance/db1/5432\t.*"status":0`), 10*time.Second)
	p.waitLine(t, regexp.MustCompile(`^\d+\tput\t/PostgresInstance/db1/5432\t.*"status":3`), 10*time.Second)

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() {
		for line := range p.lines { // drain, so the command never blocks on stdout
			_ = line
		}
		exited <- cmd.Wait()
	}()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("lenkwerk dev after SIGINT: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("lenkwerk dev still running 20s after SIGINT")
	}
	// pg_ctl stop returns once postmaster.pid is gone, a moment before
	// the process itself; its parent (pid 1) may reap it later still.
	for deadline := time.Now().Add(10 * time.Second); processAlive(pgPID); {
		if time.Now().After(deadline) {
			t.Fatalf("postgres (pid %d) still running 10s after lenkwerk dev exited", pgPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data directory %s left behind: %v", dataDir, err)
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
