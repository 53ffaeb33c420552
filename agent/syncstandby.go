package agent

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// standbyName: an application_name as the agent accepts it in
// Config.SyncStandbys (PostgreSQL keeps 63 bytes; printable ASCII).
var standbyName = regexp.MustCompile(`^[\x21-\x7e]{1,63}$`)

// CheckSyncStandbys checks the names of Config.SyncStandbys.
func CheckSyncStandbys(names []string) error {
	for _, n := range names {
		if !standbyName.MatchString(n) {
			return fmt.Errorf("invalid standby name %q (want an application_name: 1-63 printable ASCII characters, no space)", n)
		}
	}
	return nil
}

// syncStandbyWarn is how long the agent waits for the named standbys
// before it says so (once per wait, then every minute).
const syncStandbyWarn = 10 * time.Second

// waitStandbys blocks until every standby named in Config.SyncStandbys has
// flushed WAL up to lsn, as pg_stat_replication reports it: a change is
// applied to the store only once a failover to one of them cannot lose it
// (PostgreSQL 17's synchronized_standby_slots does the same for logical
// walsenders). A named standby that is not connected holds everything
// back, as it does there. Status updates continue meanwhile.
func (s *session) waitStandbys(ctx context.Context, lsn pglogrepl.LSN) error {
	names := s.a.cfg.SyncStandbys
	if len(names) == 0 || s.standbyFlushed >= lsn {
		return nil
	}
	start := time.Now()
	warnAt := start.Add(syncStandbyWarn)
	d := 200 * time.Microsecond
	defer func() {
		s.a.update(func(st *Status) { st.WaitingForStandbys = 0 })
	}()
	for {
		flushed, missing, err := s.standbysFlushed(ctx, names)
		if err != nil {
			return err
		}
		s.standbyFlushed = flushed
		if flushed >= lsn {
			return nil
		}
		s.a.update(func(st *Status) { st.WaitingForStandbys = lsn })
		s.keepalive()
		if now := time.Now(); now.After(warnAt) {
			s.a.log.Warn("waiting for the standbys named by --sync-standbys to flush a change before it goes to the store", "lsn", lsn, "flushed", flushed, "not_connected", strings.Join(missing, ","), "waited", now.Sub(start).Round(time.Second))
			warnAt = now.Add(time.Minute)
		}
		if sleep(ctx, d) {
			return ctx.Err()
		}
		d = min(2*d, 20*time.Millisecond)
	}
}

// standbysFlushed is the lowest flush position of the named standbys (the
// highest of the walsenders of one name), 0 when one is not connected.
func (s *session) standbysFlushed(ctx context.Context, names []string) (pglogrepl.LSN, []string, error) {
	rows, err := s.conn.Query(ctx, `SELECT application_name, max(flush_lsn)::text FROM pg_stat_replication WHERE application_name = ANY($1) AND flush_lsn IS NOT NULL GROUP BY application_name`, names)
	if err != nil {
		return 0, nil, fmt.Errorf("read pg_stat_replication for --sync-standbys: %w", err)
	}
	defer rows.Close()
	seen := map[string]pglogrepl.LSN{}
	for rows.Next() {
		var name, flush string
		if err := rows.Scan(&name, &flush); err != nil {
			return 0, nil, fmt.Errorf("read pg_stat_replication for --sync-standbys: %w", err)
		}
		lsn, err := pglogrepl.ParseLSN(flush)
		if err != nil {
			return 0, nil, fmt.Errorf("pg_stat_replication flush_lsn %q: %w", flush, err)
		}
		seen[name] = lsn
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("read pg_stat_replication for --sync-standbys: %w", err)
	}
	var missing []string
	low := pglogrepl.LSN(0)
	for i, n := range names {
		f, ok := seen[n]
		if !ok {
			missing = append(missing, n)
		}
		if i == 0 || f < low {
			low = f
		}
	}
	slices.Sort(missing)
	return low, missing, nil
}
