package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ownerFile, in a temporary cluster directory, names the process that
// started the cluster: "PID STARTTIME" (STARTTIME from /proc, so a reused
// PID is not mistaken for the owner; "0" where /proc is missing).
const ownerFile = "lenkwerk-pgtest.owner"

// tempPrefix names the temporary cluster directories.
const tempPrefix = "lenkwerk-pgtest-"

var reapOnce sync.Once

// writeOwner records this process as the owner of the cluster in dir.
func writeOwner(dir string) error {
	pid := os.Getpid()
	line := fmt.Sprintf("%d %d\n", pid, startTime(pid))
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(line), 0o644); err != nil {
		return fmt.Errorf("record cluster owner: %w", err)
	}
	return nil
}

// startTime is the process's start time in clock ticks since boot (field
// 22 of /proc/PID/stat), or 0 when it cannot be read.
func startTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// ownerAlive reports whether the process recorded in dir's owner file
// still runs; ok is false when there is no readable owner file (a cluster
// being created, or made by an older pgtest): such directories are left
// alone.
func ownerAlive(dir string) (alive, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false, false
	}
	var pid int
	var start uint64
	if n, _ := fmt.Sscan(string(b), &pid, &start); n < 1 || pid <= 0 {
		return false, false
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false, true
	}
	// Alive (EPERM too: another user's process), unless the PID was reused.
	if start != 0 {
		if now := startTime(pid); now != 0 && now != start {
			return false, true
		}
	}
	return true, true
}

// reapStale stops and removes the temporary clusters whose owner process
// is gone: a test binary killed before its cleanup leaks a running server
// and its files. Best effort: a directory whose server will not stop is
// kept.
func reapStale(bindir string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range dirs {
		if alive, ok := ownerAlive(dir); !ok || alive {
			continue
		}
		if err := stopStale(bindir, dir); err != nil {
			fmt.Fprintf(os.Stderr, "devstack: postgres: stale cluster %s (its owner is gone) kept: %v\n", dir, err)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "devstack: postgres: remove stale cluster %s: %v\n", dir, err)
			continue
		}
		fmt.Fprintf(os.Stderr, "devstack: postgres: stopped and removed stale cluster %s (its owner process is gone)\n", dir)
	}
}

// StopStale stops, with an immediate shutdown, the server of the cluster
// directory dir (the Options.Dir it was started with) if one runs there:
// for a process that outlived the one that started it (lenkwerk dev's
// watchdog). It returns once postmaster.pid is gone.
func StopStale(dir string) error {
	bindir, err := BinDir()
	if err != nil {
		return err
	}
	return stopStale(bindir, dir)
}

// stopStale stops the server of a stale cluster directory, if one runs.
func stopStale(bindir, dir string) error {
	c := &Cluster{bindir: bindir, dir: dir}
	pidFile := filepath.Join(c.dataDir(), "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		return nil // no server was running (or it was never started)
	}
	if os.Geteuid() == 0 {
		var st syscall.Stat_t
		if err := syscall.Stat(c.dataDir(), &st); err != nil {
			return fmt.Errorf("stat data dir: %w", err)
		}
		c.owner = &syscall.Credential{Uid: st.Uid, Gid: st.Gid}
	}
	err := c.run(context.Background(), "pg_ctl", "-D", c.dataDir(), "-m", "immediate", "-w", "-t", "30", "stop")
	if _, statErr := os.Stat(pidFile); err != nil && statErr == nil {
		return err
	}
	return nil
}
