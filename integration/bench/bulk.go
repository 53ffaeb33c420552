package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Throughput is rows (or keys) per second of one run.
type Throughput struct {
	Rows    int
	Elapsed time.Duration
	// Writes counts DirectLoad's store batches.
	Writes int
	// CPU is what the run cost the machine's processors.
	CPU CPU
}

// CPUPerRow is the run's processor time per row.
func (t Throughput) CPUPerRow() time.Duration { return t.CPU.Total() / time.Duration(max(t.Rows, 1)) }

// Cores is how many processors the run kept busy on average.
func (t Throughput) Cores() float64 { return t.CPU.Total().Seconds() / t.Elapsed.Seconds() }

// PerSec is Rows per second.
func (t Throughput) PerSec() float64 { return float64(t.Rows) / t.Elapsed.Seconds() }

// ThroughputResult is the agent's rate next to the raw store's, measured
// in the same run.
type ThroughputResult struct {
	Agent, Direct Throughput
	// AgentRSS is the agent process's peak RSS in bytes.
	AgentRSS int64
	// StoreTime is the part of Agent.Elapsed an in-process agent spent in
	// store writes (StoreWrites of them); 0 for a process.
	StoreTime   time.Duration
	StoreWrites int64
}

// Ratio is the agent's rate as a fraction of the direct rate.
func (r ThroughputResult) Ratio() float64 { return r.Agent.PerSec() / r.Direct.PerSec() }

// DirectLoad writes rows keys under prefix straight into store in batches
// of the store's MaxBatchOps (10,000, the agent's own cap, when unlimited)
// within MaxBatchBytes: the raw baseline of Bulk and InitialSync. The
// values are built before the clock starts.
func DirectLoad(ctx context.Context, store *kvdriver.Store, prefix string, rows int) (Throughput, error) {
	l := store.Limits()
	maxOps, maxBytes := l.MaxBatchOps, l.MaxBatchBytes
	if maxOps <= 0 {
		maxOps = 10000
	}
	if maxBytes <= 0 {
		maxBytes = 16 << 20
	}
	var batches [][]kvdriver.Op
	var cur []kvdriver.Op
	size := 0
	for g := 1; g <= rows; g++ {
		key := rowKey("bulk", g)
		op := kvdriver.Put(prefix+"/"+key, rowValue(g, key, g))
		if n := len(op.Key) + len(op.Value); len(cur) == maxOps || size+n > maxBytes {
			batches, cur, size = append(batches, cur), nil, 0
		}
		cur = append(cur, op)
		size += len(op.Key) + len(op.Value)
	}
	batches = append(batches, cur)
	start := time.Now()
	for _, b := range batches {
		if _, err := store.Apply(ctx, b); err != nil {
			return Throughput{}, fmt.Errorf("bench: direct apply of %d ops: %w", len(b), err)
		}
	}
	return Throughput{Rows: rows, Elapsed: time.Since(start), Writes: len(batches)}, nil
}

// directTwice runs DirectLoad before and after the agent's run (run) and
// sums both: the load on a shared machine drifts, and the mean of the two
// is fairer to compare with the run between them.
func (e *Env) directTwice(ctx context.Context, store *kvdriver.Store, rows int, run func() error) (Throughput, error) {
	load := func() (Throughput, error) {
		c0 := e.cpuNow(0)
		t, err := DirectLoad(ctx, store, fmt.Sprintf("/raw%d", e.next()), rows)
		t.CPU = e.cpuNow(0).sub(c0)
		return t, err
	}
	t1, err := load()
	if err != nil {
		return Throughput{}, err
	}
	if err := run(); err != nil {
		return Throughput{}, err
	}
	t2, err := load()
	if err != nil {
		return Throughput{}, err
	}
	cpu := CPU{Postgres: t1.CPU.Postgres + t2.CPU.Postgres, Bench: t1.CPU.Bench + t2.CPU.Bench}
	return Throughput{Rows: t1.Rows + t2.Rows, Elapsed: t1.Elapsed + t2.Elapsed, Writes: t1.Writes + t2.Writes, CPU: cpu}, nil
}

// countKeys counts the keys under prefix named like rowKey(name, …).
func countKeys(ctx context.Context, store *kvdriver.Store, prefix, name string) (int, error) {
	kvs, _, err := store.List(ctx, prefix)
	if err != nil {
		return 0, fmt.Errorf("bench: list %s: %w", prefix, err)
	}
	n := 0
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, prefix+"/"+name+"-") {
			n++
		}
	}
	return n, nil
}

// Bulk measures rows changed in transactions of txRows rows each until all
// keys are in the store, next to DirectLoad of as many keys.
//
// With txRows == rows (one transaction) the agent is streaming when the
// transaction commits, and the clock runs from the COMMIT to the
// checkpoint covering it. With smaller transactions the writer could not
// keep up with the agent, so they are committed while the agent is stopped
// and the clock runs from starting the agent (process start and connection
// included) to the checkpoint covering the last one: a catch-up.
func (e *Env) Bulk(ctx context.Context, kind StoreKind, rows, txRows int) (res ThroughputResult, err error) {
	store, err := e.OpenStore(ctx, kind)
	if err != nil {
		return res, err
	}
	defer store.Close()
	direct, err := e.directTwice(ctx, store, rows, func() (err error) {
		res, err = e.bulk(ctx, store, kind, rows, txRows)
		return err
	})
	res.Direct = direct
	return res, err
}

// LargeTransaction is Bulk of one transaction without the baseline: a
// memory scenario (the agent applies the transaction in chunks).
func (e *Env) LargeTransaction(ctx context.Context, kind StoreKind, rows int) (ThroughputResult, error) {
	store, err := e.OpenStore(ctx, kind)
	if err != nil {
		return ThroughputResult{}, err
	}
	defer store.Close()
	return e.bulk(ctx, store, kind, rows, rows)
}

func (e *Env) bulk(ctx context.Context, store *kvdriver.Store, kind StoreKind, rows, txRows int) (res ThroughputResult, err error) {

	src, err := e.NewSource(ctx)
	if err != nil {
		return res, err
	}
	defer src.Close()
	prefix := fmt.Sprintf("/bulk%d", e.next())
	a, err := e.StartAgent(ctx, src, kind, prefix)
	if err != nil {
		return res, err
	}
	defer func() {
		if a != nil {
			a.Stop()
		}
	}()
	if _, err := a.WaitCheckpoint(ctx, store, src.Slot, 0, time.Minute); err != nil {
		return res, err
	}
	var start time.Time
	var last pglogrepl.LSN
	var cpu0 CPU
	storeBefore, _ := a.StoreTime()
	if txRows >= rows {
		tx, err := src.Pool.Begin(ctx)
		if err != nil {
			return res, fmt.Errorf("bench: %w", err)
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(ctx, insertRows, "bulk", 1, rows); err != nil {
			return res, fmt.Errorf("bench: insert: %w", err)
		}
		var pre string
		if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&pre); err != nil {
			return res, fmt.Errorf("bench: %w", err)
		}
		if last, err = pglogrepl.ParseLSN(pre); err != nil {
			return res, err
		}
		cpu0 = e.cpuNow(a.pid())
		start = time.Now()
		if err := tx.Commit(ctx); err != nil {
			return res, fmt.Errorf("bench: commit: %w", err)
		}
	} else {
		if err := a.Stop(); err != nil {
			return res, err
		}
		if err := src.WaitSlotReleased(ctx); err != nil {
			return res, err
		}
		for g := 1; g <= rows; g += txRows {
			pre, err := src.InsertConfig(ctx, "bulk", g, min(txRows, rows-g+1))
			if err != nil {
				return res, err
			}
			if last, err = pglogrepl.ParseLSN(pre); err != nil {
				return res, err
			}
		}
		cpu0 = e.cpuNow(0)
		if a, err = e.StartAgent(ctx, src, kind, prefix); err != nil {
			return res, err
		}
		start, storeBefore = a.Started, 0
	}
	end, err := a.WaitCheckpoint(ctx, store, src.Slot, last, 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.Agent = Throughput{Rows: rows, Elapsed: end.Sub(start), CPU: e.cpuNow(a.pid()).sub(cpu0)}
	res.StoreTime, res.StoreWrites = a.StoreTime()
	res.StoreTime -= storeBefore
	if res.AgentRSS, err = a.PeakRSS(); err != nil {
		return res, err
	}
	return res, checkBulkKeys(ctx, store, prefix, rows, "the checkpoint")
}

// InitialSync measures an agent copying rows rows into an empty store
// (from its start to its first checkpoint), next to DirectLoad of as many
// keys.
func (e *Env) InitialSync(ctx context.Context, kind StoreKind, rows int) (res ThroughputResult, err error) {
	store, err := e.OpenStore(ctx, kind)
	if err != nil {
		return res, err
	}
	defer store.Close()
	direct, err := e.directTwice(ctx, store, rows, func() (err error) {
		res, err = e.initialSync(ctx, store, kind, rows)
		return err
	})
	res.Direct = direct
	return res, err
}

func (e *Env) initialSync(ctx context.Context, store *kvdriver.Store, kind StoreKind, rows int) (res ThroughputResult, err error) {
	src, err := e.NewSource(ctx)
	if err != nil {
		return res, err
	}
	defer src.Close()
	if _, err := src.InsertConfig(ctx, "bulk", 1, rows); err != nil {
		return res, err
	}
	if _, err := src.Pool.Exec(ctx, `VACUUM ANALYZE storage.config`); err != nil {
		return res, fmt.Errorf("bench: vacuum: %w", err)
	}
	prefix := fmt.Sprintf("/sync%d", e.next())
	cpu0 := e.cpuNow(0)
	a, err := e.StartAgent(ctx, src, kind, prefix)
	if err != nil {
		return res, err
	}
	defer a.Stop()
	end, err := a.WaitCheckpoint(ctx, store, src.Slot, 0, 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.Agent = Throughput{Rows: rows, Elapsed: end.Sub(a.Started), CPU: e.cpuNow(a.pid()).sub(cpu0)}
	res.StoreTime, res.StoreWrites = a.StoreTime()
	if res.AgentRSS, err = a.PeakRSS(); err != nil {
		return res, err
	}
	return res, checkBulkKeys(ctx, store, prefix, rows, "the initial sync")
}

// checkBulkKeys checks that store holds a key under prefix for each of the
// rows bulk rows, after when.
func checkBulkKeys(ctx context.Context, store *kvdriver.Store, prefix string, rows int, when string) error {
	n, err := countKeys(ctx, store, prefix+"/Config", "bulk")
	if err != nil {
		return err
	}
	if n != rows {
		return fmt.Errorf("bench: the store has %d of %d keys after %s", n, rows, when)
	}
	return nil
}
