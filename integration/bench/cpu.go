package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU is the processor time (user + system) the parts of a run used: on a
// two-core machine a run whose parts use about two cores' worth is bound
// by the processors, not by waiting.
type CPU struct {
	// Agent is the agent process (0 for an in-process agent: it is in
	// Bench).
	Agent time.Duration
	// Postgres is every process of the cluster: walsenders, the
	// benchmark's backends, pgkv's.
	Postgres time.Duration
	// Bench is this process: the embedded etcd server, the store clients,
	// the watchers, an in-process agent.
	Bench time.Duration
}

// Total is the sum of the parts.
func (c CPU) Total() time.Duration { return c.Agent + c.Postgres + c.Bench }

func (c CPU) sub(d CPU) CPU {
	return CPU{Agent: c.Agent - d.Agent, Postgres: c.Postgres - d.Postgres, Bench: c.Bench - d.Bench}
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time of pid, with its waited-for children when
// children is set, and its parent.
func procCPU(pid int, children bool) (time.Duration, int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bench: /proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("bench: /proc/%d/stat: %d fields", pid, len(f))
	}
	n := func(field int) int64 { v, _ := strconv.ParseInt(f[field-3], 10, 64); return v }
	ticks := n(14) + n(15)
	if children {
		ticks += n(16) + n(17)
	}
	return time.Duration(ticks) * clockTick, int(n(4)), nil
}

// cpuNow reads the CPU time used so far by the agent (pid 0: none), the
// PostgreSQL cluster and this process.
func (e *Env) cpuNow(agentPID int) CPU {
	var c CPU
	if agentPID > 0 {
		c.Agent, _, _ = procCPU(agentPID, true)
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.Bench = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c.Postgres = e.postgresCPU()
	return c
}

// postgresCPU is the postmaster's CPU time, its exited children's and its
// live children's.
func (e *Env) postgresCPU() time.Duration {
	b, err := os.ReadFile(filepath.Join(e.PG.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total, _, _ := procCPU(pm, true)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == pm {
			continue
		}
		if t, ppid, err := procCPU(pid, false); err == nil && ppid == pm {
			total += t
		}
	}
	return total
}

// pid is the agent process's PID, 0 for an in-process agent.
func (a *Agent) pid() int {
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}
