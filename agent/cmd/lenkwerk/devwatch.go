package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/bagger/lenkwerk/agent/devstack"
)

// A PostgreSQL server started with pg_ctl is a daemon: it outlives the dev
// that started it when dev is killed (SIGKILL, the OOM killer, a terminal
// closed under it, os.Exit on a second Ctrl-C). So dev starts a watchdog
// before the server: a second lenkwerk process in a session of its own
// (the terminal's signals do not reach it) that reads a pipe only dev
// holds. When dev ends, however it ends, the pipe reaches EOF and the
// watchdog stops whatever server still runs in dev's cluster directory
// and removes a temporary data directory. After a clean exit there is
// nothing left to do, and it exits at once.
const (
	// watchdogEnv names the cluster directory the watchdog guards; set,
	// lenkwerk runs as the watchdog instead of a command.
	watchdogEnv = "LENKWERK_DEV_WATCHDOG"
	// watchdogRemoveEnv names a directory the watchdog removes afterwards
	// (dev's temporary one; empty with --dir).
	watchdogRemoveEnv = "LENKWERK_DEV_WATCHDOG_REMOVE"
	// watchdogParentEnv is dev's PID, for the watchdog's message.
	watchdogParentEnv = "LENKWERK_DEV_WATCHDOG_PARENT"
)

// startWatchdog starts the watchdog of the cluster in clusterDir,
// removing removeDir ("" to keep) once dev is gone. The returned file is
// the pipe's write end: dev holds it open until it exits (closing it ends
// the watchdog's watch).
func startWatchdog(clusterDir, removeDir string) (*os.File, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(),
		watchdogEnv+"="+clusterDir,
		watchdogRemoveEnv+"="+removeDir,
		fmt.Sprintf("%s=%d", watchdogParentEnv, os.Getpid()))
	cmd.Stdin = r
	cmd.Stderr = os.Stderr
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	// Not waited for: it outlives dev by design (and init reaps it).
	_ = cmd.Process.Release()
	return w, nil
}

// runWatchdog is the watchdog process: it waits for EOF on stdin (dev is
// gone), then stops the server in clusterDir if one still runs and
// removes removeDir.
func runWatchdog(clusterDir string) int {
	// A terminal's Ctrl-C or hang-up is for dev, which cleans up itself;
	// the watchdog must see it through. A closed stderr must not kill it.
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	_, _ = io.Copy(io.Discard, os.Stdin)
	status := 0
	if _, err := os.Stat(filepath.Join(clusterDir, "data", "postmaster.pid")); err == nil {
		if err := devstack.StopStale(clusterDir); err != nil {
			fmt.Fprintf(os.Stderr, "lenkwerk dev watchdog: dev (pid %s) is gone, and its PostgreSQL in %s would not stop: %v\n", os.Getenv(watchdogParentEnv), clusterDir, err)
			return 1 // its files stay with it
		}
		fmt.Fprintf(os.Stderr, "lenkwerk dev watchdog: dev (pid %s) is gone: stopped its PostgreSQL in %s\n", os.Getenv(watchdogParentEnv), clusterDir)
	}
	if dir := os.Getenv(watchdogRemoveEnv); dir != "" {
		if _, err := os.Stat(dir); err == nil {
			if err := os.RemoveAll(dir); err != nil {
				fmt.Fprintf(os.Stderr, "lenkwerk dev watchdog: remove %s: %v\n", dir, err)
				status = 1
			} else {
				fmt.Fprintf(os.Stderr, "lenkwerk dev watchdog: removed %s\n", dir)
			}
		}
	}
	return status
}
