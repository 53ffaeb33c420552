package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// advisoryLockSpace is the first key of the agents' advisory locks
// ("LW"); the second is hashtext(slot).
const advisoryLockSpace = 0x4c57

// lock takes the slot's agent lock (advisory, session level) on the
// replication connection repl (simple queries, so the SQL carries the
// validated slot name). With wait, an agent that finds it held is a
// standby: it logs so once and blocks in pg_advisory_lock, which
// PostgreSQL grants the moment the holder's session ends. Without wait it
// fails with "slot in use".
func (a *Agent) lock(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn, wait bool) error {
	key := fmt.Sprintf("%d, hashtext('%s')", advisoryLockSpace, a.cfg.Slot) // slotName: [a-z0-9_]
	locked, err := simpleBool(ctx, repl, "SELECT pg_try_advisory_lock("+key+")")
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
			// Migration 8 leaves the agents' lock to lenkwerk_agent.
			return fmt.Errorf("take the agent lock of slot %s: %w (only lenkwerk_agent, its members and superusers may take it: run the agent as lenkwerk_agent)", a.cfg.Slot, err)
		}
		return fmt.Errorf("take the agent lock of slot %s: %w", a.cfg.Slot, err)
	}
	if locked {
		return nil
	}
	inUse := fmt.Errorf("%w: replication slot %q is used by another Lenkwerk agent (it holds the agent's advisory lock)", ErrSlotInUse, a.cfg.Slot)
	if !wait {
		return inUse
	}
	a.log.Info("replication slot is used by another consumer (a Lenkwerk agent holds its lock): standby, waiting to take over", "lock_holder_pid", lockHolder(ctx, conn, a.cfg.Slot))
	start := time.Now()
	a.update(func(st *Status) { st.Standby = true })
	defer a.update(func(st *Status) { st.Standby = false })
	a.unblock() // the active agent has the stream now
	// Wait in rounds bounded by lock_timeout (5 StandbyRetry, 5s by
	// default): each round is a round trip, so a standby whose own
	// connection died silently (a network cut) notices within a round
	// instead of blocking on a dead socket.
	round := 5 * a.cfg.StandbyRetry
	if _, err := repl.Exec(ctx, fmt.Sprintf("SET lock_timeout = '%dms'", max(round.Milliseconds(), 1))).ReadAll(); err != nil {
		return fmt.Errorf("standby: set lock_timeout: %w", err)
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*round+5*time.Second)
		_, err := repl.Exec(rctx, "SELECT pg_advisory_lock("+key+")").ReadAll()
		cancel()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable { // another round
			continue
		}
		if err != nil {
			return fmt.Errorf("standby: wait for the agent lock of slot %s: %w", a.cfg.Slot, err)
		}
		break
	}
	if _, err := repl.Exec(ctx, "RESET lock_timeout").ReadAll(); err != nil {
		return fmt.Errorf("standby: reset lock_timeout: %w", err)
	}
	a.log.Info("taking over: got the agent lock of the slot", "waited", time.Since(start).Round(time.Millisecond))
	return nil
}

// simpleBool runs a simple query returning one boolean.
func simpleBool(ctx context.Context, c *pgconn.PgConn, sql string) (bool, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return false, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return false, fmt.Errorf("%s: unexpected result", sql)
	}
	return string(res[0].Rows[0][0]) == "t", nil
}

// lockHolder is the backend PID holding the slot's agent lock, for the log
// (0 when unknown).
func lockHolder(ctx context.Context, conn *pgx.Conn, slot string) int32 {
	var pid int32
	_ = conn.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = hashtext($2)::oid AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, advisoryLockSpace, slot).Scan(&pid)
	return pid
}
