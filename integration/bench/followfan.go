package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/migrations"
)

// FollowResult is one run of the fan-out scenario with `lenkwerk follow`
// processes as the consumers: each keeps a local copy (a database of its
// own) equal to the store.
type FollowResult struct {
	Followers int
	// Steady and Burst are from the start of each commit in the source
	// database to the commit of its row in each local copy (the copy's
	// commit timestamp: track_commit_timestamp), over every follower.
	Steady, Burst Latencies
	BurstKeys     int
	// PGConnections are the cluster's client backends while the followers
	// run (source, agent, pgkv and the followers' local copies; not the
	// benchmark's own connections to the copies).
	PGConnections int
	// CPU is the agent, the cluster (which also holds every local copy)
	// and this process; Followers the follow processes together, from the
	// first steady write to the rotation's last local commit.
	CPU             CPU
	FollowersCPU    time.Duration
	Elapsed         time.Duration
	FollowerPeakRSS int64 // the largest VmHWM of the follow processes
	// Startup is from starting the processes to every copy holding the
	// tree as it was (their initial reconcile).
	Startup time.Duration
}

// copyTemplate is the database every local copy is cloned from: the
// Lenkwerk migrations as a copy, run once per Env.
const copyTemplate = "lw_copy_template"

// copyAppName marks the benchmark's own connections to the local copies,
// which Env.connections does not count.
const copyAppName = "lwbench-copy"

// FanoutFollow runs the fan-out scenario with n `lenkwerk follow`
// processes, each following kind's store into a local copy of its own in
// the Env's cluster: steady transactions at rate per second through
// storage.save_config, then one transaction of burst keys, measured from
// the start of each commit to the commit of the row in each copy.
func (e *Env) FanoutFollow(ctx context.Context, kind StoreKind, n, steady int, rate float64, burst int) (res FollowResult, err error) {
	if e.InProcess {
		return res, errors.New("bench: the follow fan-out runs the lenkwerk binary (not with InProcess)")
	}
	res.Followers, res.BurstKeys = n, burst
	copies, err := e.localCopies(ctx, n)
	if err != nil {
		return res, err
	}
	st, err := e.startStreaming(ctx, kind, "fol", nil)
	if err != nil {
		return res, err
	}
	defer st.Close()
	a, prefix, conn := st.agent, st.prefix, st.conn
	// A row already in the tree, which each copy's initial reconcile
	// brings: when every copy has it, every follower watches.
	if _, err := conn.Exec(ctx, `SELECT storage.save_config('ready', $1::json)`, fanoutValue); err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}

	fs := make([]*follower, 0, n)
	defer func() {
		for _, f := range fs {
			_ = f.cmd.Process.Signal(syscall.SIGTERM) // all at once, then wait
		}
		for _, f := range fs {
			err = errors.Join(err, f.stop())
		}
	}()
	started := time.Now()
	for i, c := range copies {
		f, err := e.startFollower(c, kind, prefix)
		if err != nil {
			return res, fmt.Errorf("follower %d: %w", i, err)
		}
		fs = append(fs, f)
	}
	if err := waitFollowers(ctx, fs, 20*time.Millisecond, "ready", 1); err != nil {
		return res, fmt.Errorf("startup: %w", err)
	}
	res.Startup = time.Since(started)

	total := warmup + steady
	cpu0, fcpu0 := e.cpuNow(a.pid()), followersCPU(fs)
	t0 := time.Now()
	steadyStart, err := st.writeSteady(ctx, total, rate, func() (err error) {
		res.PGConnections, _, err = e.connections(ctx, st.src)
		return err
	})
	if err != nil {
		return res, err
	}
	// Polled rarely: the latencies come from the copies' commit
	// timestamps, the polls only decide when to go on.
	if err := waitFollowers(ctx, fs, 100*time.Millisecond, "lat-%", total); err != nil {
		return res, fmt.Errorf("steady: %w", err)
	}
	burstStart := time.Now()
	if err := st.writeRotation(ctx, burst); err != nil {
		return res, err
	}
	if err := waitFollowers(ctx, fs, 100*time.Millisecond, "rot-%", burst); err != nil {
		return res, fmt.Errorf("rotation: %w", err)
	}
	// The followers' figures end at the last local commit, not at the
	// poll that saw it.
	cpu1, fcpu1 := e.cpuNow(a.pid()), followersCPU(fs)
	if err := a.exited(); err != nil {
		return res, err
	}

	var sl, bl []time.Duration
	var last time.Time
	for i, f := range fs {
		rows, err := f.conn.Query(ctx, `SELECT key, pg_xact_commit_timestamp(xmin) FROM storage.config WHERE key LIKE 'lat-%' OR key LIKE 'rot-%'`)
		if err != nil {
			return res, fmt.Errorf("follower %d: commit timestamps: %w", i, err)
		}
		for rows.Next() {
			var key string
			var at time.Time
			if err := rows.Scan(&key, &at); err != nil {
				return res, fmt.Errorf("follower %d: %w", i, err)
			}
			var g int
			if _, err := fmt.Sscanf(key[4:], "%d", &g); err != nil {
				return res, fmt.Errorf("follower %d: key %q: %w", i, key, err)
			}
			switch {
			case strings.HasPrefix(key, "lat-") && g >= warmup && g < total:
				sl = append(sl, at.Sub(steadyStart[g]))
			case strings.HasPrefix(key, "rot-"):
				bl = append(bl, at.Sub(burstStart))
				if at.After(last) {
					last = at
				}
			}
		}
		if err := rows.Err(); err != nil {
			return res, fmt.Errorf("follower %d: %w", i, err)
		}
		if rss, err := peakRSS(f.cmd.Process.Pid); err == nil {
			res.FollowerPeakRSS = max(res.FollowerPeakRSS, rss)
		}
	}
	if len(sl) != n*steady || len(bl) != n*burst {
		return res, fmt.Errorf("bench: %d steady and %d rotation rows in the copies, want %d and %d", len(sl), len(bl), n*steady, n*burst)
	}
	res.Elapsed = last.Sub(t0)
	secs := cpu1.sub(cpu0)
	res.CPU, res.FollowersCPU = secs, fcpu1-fcpu0
	res.Steady = summarize(sl, []time.Duration{0}, 0)
	res.Burst = summarize(bl, []time.Duration{0}, last.Sub(burstStart))
	return res, nil
}

// follower is one `lenkwerk follow` process and its local copy.
type follower struct {
	*localCopy
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// localCopy is a database provisioned as a local copy, reused by the runs
// of an Env (cloning dozens of databases per run would dominate its wall
// time; the cluster goes with the Env).
type localCopy struct {
	db   string
	conn *pgx.Conn // the benchmark's connection to it
}

// localCopies returns n local copies, emptied of the last run's rows and
// checkpoint, so that each follower starts as a new storage node does:
// listing the tree.
func (e *Env) localCopies(ctx context.Context, n int) ([]*localCopy, error) {
	e.copyMu.Lock()
	defer e.copyMu.Unlock()
	if len(e.copies) == 0 {
		if err := e.stack.CreateDatabase(ctx, copyTemplate); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		if err := migrations.Up(ctx, e.PG.URL(copyTemplate, ""), migrations.Options{Copy: true}); err != nil {
			return nil, fmt.Errorf("bench: migrate %s: %w", copyTemplate, err)
		}
	}
	for len(e.copies) < n {
		c := &localCopy{db: fmt.Sprintf("lw_copy_%d", len(e.copies))}
		if err := e.adminExec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", c.db, copyTemplate)); err != nil {
			return nil, err
		}
		cfg, err := pgx.ParseConfig(e.PG.URL(c.db, ""))
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		cfg.RuntimeParams["application_name"] = copyAppName
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		c.conn = conn
		e.copies = append(e.copies, c)
	}
	for _, c := range e.copies[:n] {
		if _, err := c.conn.Exec(ctx, `TRUNCATE storage.config, lenkwerk.follow_state`); err != nil {
			return nil, fmt.Errorf("bench: empty %s: %w", c.db, err)
		}
	}
	return e.copies[:n], nil
}

// adminExec runs sql as the superuser in database postgres.
func (e *Env) adminExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, e.PG.URL("postgres", ""))
	if err != nil {
		return fmt.Errorf("bench: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("bench: %s: %w", sql, err)
	}
	return nil
}

// closeCopies closes the benchmark's connections to the local copies.
func (e *Env) closeCopies() {
	e.copyMu.Lock()
	defer e.copyMu.Unlock()
	for _, c := range e.copies {
		c.conn.Close(context.Background())
	}
	e.copies = nil
}

// startFollower starts `lenkwerk follow` on c.
func (e *Env) startFollower(c *localCopy, kind StoreKind, prefix string) (*follower, error) {
	f := &follower{localCopy: c, done: make(chan struct{})}
	f.logPath = filepath.Join(e.Dir, fmt.Sprintf("follow-%d.log", e.next()))
	log, err := os.Create(f.logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	f.cmd = exec.Command(e.Bin, "follow", "--database-url", e.PG.URL(c.db, ""), "--kv", e.StoreURL(kind),
		"--prefix", prefix, "--migrate=false", "--log-level", "warn")
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startLogged(f.cmd, log, f.done); err != nil {
		return nil, fmt.Errorf("bench: start lenkwerk follow: %w", err)
	}
	return f, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (f *follower) stop() error {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
		return fmt.Errorf("bench: follower on %s did not stop within 10s of SIGTERM", f.db)
	}
}

// exited reports a follow process that ended by itself, with its log.
func (f *follower) exited() error {
	select {
	case <-f.done:
		b, _ := os.ReadFile(f.logPath)
		if len(b) > 4<<10 {
			b = b[len(b)-4<<10:]
		}
		return fmt.Errorf("bench: lenkwerk follow on %s exited (%v); its log:\n%s", f.db, f.cmd.ProcessState, b)
	default:
		return nil
	}
}

// waitFollowers polls every follower's copy every poll until it has want
// storage.config rows whose key is LIKE like, for at most a minute.
func waitFollowers(ctx context.Context, fs []*follower, poll time.Duration, like string, want int) error {
	deadline := time.Now().Add(time.Minute)
	for i, f := range fs {
		for {
			var c int
			if err := f.conn.QueryRow(ctx, `SELECT count(*) FROM storage.config WHERE key LIKE $1`, like).Scan(&c); err != nil {
				return fmt.Errorf("follower %d: %w", i, err)
			}
			if c == want {
				break
			}
			if err := f.exited(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("follower %d (%s): not there within a minute", i, f.db)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(poll):
			}
		}
	}
	return nil
}

// followersCPU is the CPU time the follow processes used so far.
func followersCPU(fs []*follower) time.Duration {
	var t time.Duration
	for _, f := range fs {
		if d, _, err := procCPU(f.cmd.Process.Pid, false); err == nil {
			t += d
		}
	}
	return t
}
