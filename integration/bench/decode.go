package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/kvdriver"
)

// DecodeResult is the agent's decoding rate (pgoutput parsing, to_jsonb
// encoding, keys, batching; the store discards) next to pg_recvlogical's
// on the same stream.
type DecodeResult struct {
	Agent, Recvlogical Throughput
	// WAL is the WAL the transaction took, in bytes.
	WAL int64
	// Discarded counts the row operations the agent handed to the store.
	Discarded int64
	// Startup is the part of Agent.Elapsed before the agent streamed
	// (connections, lock, slot and checkpoint checks).
	Startup time.Duration
}

// Ratio is the agent's rate as a fraction of pg_recvlogical's.
func (r DecodeResult) Ratio() float64 { return r.Agent.PerSec() / r.Recvlogical.PerSec() }

// Decode streams one transaction of rows rows three times from the same
// position: with pg_recvlogical writing to /dev/null (proto_version 1,
// the agent's publication), with an in-process agent whose store
// (Discard) drops everything but its checkpoint, and with pg_recvlogical
// again (Recvlogical sums both runs). Each clock runs from the
// consumer's start (connection included) to the end of the transaction.
func (e *Env) Decode(ctx context.Context, rows int) (res DecodeResult, err error) {
	src, err := e.NewSource(ctx)
	if err != nil {
		return res, err
	}
	defer src.Close()
	discard := NewDiscard()
	store := kvdriver.NewStore("discard", discard)
	const prefix = ""
	a, err := startInProcess(src, store, prefix)
	if err != nil {
		return res, err
	}
	if _, err := a.WaitCheckpoint(ctx, store, src.Slot, 0, time.Minute); err != nil {
		a.Stop()
		return res, err
	}
	if err := a.Stop(); err != nil {
		return res, err
	}
	if err := src.WaitSlotReleased(ctx); err != nil {
		return res, err
	}
	// pg_recvlogical's slots start where the agent's stopped: before the
	// transaction. It runs before and after the agent (the mean is the
	// baseline): the first to decode may pay for cold caches.
	rls := []string{src.Slot + "_rl1", src.Slot + "_rl2"}
	for _, rl := range rls {
		if _, err := src.Pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, rl); err != nil {
			return res, fmt.Errorf("bench: create slot %s: %w", rl, err)
		}
	}
	var before string
	if err := src.Pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&before); err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	pre, err := src.InsertConfig(ctx, "bulk", 1, rows)
	if err != nil {
		return res, err
	}
	preLSN, err := pglogrepl.ParseLSN(pre)
	if err != nil {
		return res, err
	}
	var endpos string
	if err := src.Pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&endpos); err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	if res.WAL, err = src.WALBytes(ctx, before); err != nil {
		return res, err
	}

	recvlogical := func(slot string) error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(rctx, filepath.Join(e.PG.BinDir(), "pg_recvlogical"),
			"-d", src.URL, "-S", slot, "--start", "--no-loop", "-E", endpos, "-f", "/dev/null", "-F", "0",
			"-P", "pgoutput", "-o", "proto_version=1", "-o", "publication_names="+agent.DefaultPublication)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("bench: pg_recvlogical: %w\n%s", err, out.Bytes())
		}
		res.Recvlogical.Rows += rows
		res.Recvlogical.Elapsed += time.Since(start)
		return nil
	}
	if err := recvlogical(rls[0]); err != nil {
		return res, err
	}

	a, err = startInProcess(src, store, prefix)
	if err != nil {
		return res, err
	}
	defer a.Stop()
	streaming, err := a.WaitStreaming(ctx, time.Minute)
	if err != nil {
		return res, err
	}
	end, err := a.WaitCheckpoint(ctx, store, src.Slot, preLSN, 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.Startup = streaming.Sub(a.Started)
	if err := a.Stop(); err != nil {
		return res, err
	}
	if err := recvlogical(rls[1]); err != nil {
		return res, err
	}
	res.Agent = Throughput{Rows: rows, Elapsed: end.Sub(a.Started)}
	res.Discarded = discard.Ops.Load()
	if res.Discarded < int64(rows) {
		return res, fmt.Errorf("bench: the agent wrote %d operations for %d rows", res.Discarded, rows)
	}
	return res, nil
}
