package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
)

// singleKeyCase is a table whose key template has no columns: its one key
// must end equal to the table's newest row (greatest primary key).
type singleKeyCase struct {
	name      string
	table     string
	key       string            // the store key
	templates map[string]string // agent key templates
	setup     []string          // before the agent starts
	late      []string          // run while the first round's workload runs
	insert    func(n int) string
	pk        string // the primary key column: the newest row has its greatest value
}

// del is the statement that deletes the newest row.
func (c singleKeyCase) del() string {
	return fmt.Sprintf(`DELETE FROM %s WHERE %s = (SELECT max(%[2]s) FROM %[1]s)`, c.table, c.pk)
}

// newest is the query of the newest row as to_jsonb text (no row: none).
func (c singleKeyCase) newest() string {
	return fmt.Sprintf(`SELECT to_jsonb(t.*)::text FROM %s t ORDER BY %s DESC LIMIT 1`, c.table, c.pk)
}

func singleKeyCases() []singleKeyCase {
	return []singleKeyCase{{
		name:   "servermap",
		table:  "storage.servermap",
		key:    "/Servermap",
		insert: func(n int) string { return fmt.Sprintf(`SELECT storage.save_servermap('{"gen": %d}')`, n) },
		pk:     "id",
	}, {
		// A --key-template makes any table single-key.
		name:      "config as /OneConfig",
		table:     "storage.config",
		key:       "/OneConfig",
		templates: map[string]string{"storage.config": "/OneConfig"},
		insert:    func(n int) string { return fmt.Sprintf(`SELECT storage.save_config('z%08d', '{"n": %d}')`, n, n) },
		pk:        "key",
	}, {
		// A single-key table added to the publication while the agent
		// streams and the table is being written: copied from a temporary
		// slot's snapshot, its older stream changes skipped.
		name:      "table added late",
		table:     "storage.gen",
		key:       "/Gen",
		templates: map[string]string{"storage.gen": "/Gen"},
		setup: []string{
			`CREATE TABLE storage.gen (id int PRIMARY KEY, v text NOT NULL)`,
			`ALTER TABLE storage.gen REPLICA IDENTITY FULL`,
		},
		late:   []string{`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.gen`},
		insert: func(n int) string { return fmt.Sprintf(`INSERT INTO storage.gen VALUES (%d, 'g%d')`, n, n) },
		pk:     "id",
	}}
}

// TestSingleKeyNewest is the stress test of issue 20: a single-key table's
// key must end equal to the table's newest row, whatever the timing. Each
// round runs many short transactions on the table (new generations, and
// deletes of the newest) among a steady stream of other tables' changes
// (so group commit merges batches), the agent's connections killed at a
// random moment (it resumes from the store's checkpoint and replays) or
// the agent replaced; then a marker committed after everything, and once
// the store has the marker (the store applies transactions in commit
// order) the key must equal the newest row at once.
//
// "sync standby": the same on a server with a synchronous standby (slow
// on purpose), which is what makes the race plain: a commit is flushed,
// decoded and sent to the agent, and becomes visible to other sessions
// only when the standby has confirmed it.
func TestSingleKeyNewest(t *testing.T) {
	rounds := 0 // default per mode
	if s := lookupEnvInt("LENKWERK_STRESS_ROUNDS"); s > 0 {
		rounds = s
	}
	for _, mode := range []string{"plain", "sync standby"} {
		t.Run(mode, func(t *testing.T) {
			// synchronous_commit on, PostgreSQL's default (pgtest turns it
			// off for speed): an asynchronous commit is visible before its
			// WAL is flushed, so before logical decoding can send it, and
			// the race cannot show.
			settings := map[string]string{"synchronous_commit": "on"}
			if mode == "sync standby" {
				settings["synchronous_standby_names"] = "'lw_sync'"
			}
			c := pgtest.StartCluster(t, pgtest.Options{Settings: settings})
			if mode == "sync standby" {
				slowStandby(t, c, 10*time.Millisecond)
			}
			url := func(t *testing.T) string { return c.NewDatabase(t) }
			n, ops := 10, 40 // rounds, most single-key transactions a round
			if mode == "sync standby" {
				n, ops = 6, 16 // every commit takes 10-20 ms
			}
			if rounds > 0 {
				n = rounds
			}
			for _, tc := range singleKeyCases() {
				t.Run(tc.name, func(t *testing.T) { stressSingleKey(t, url(t), tc, n, ops) })
			}
		})
	}
}

func lookupEnvInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

func stressSingleKey(t *testing.T, url string, tc singleKeyCase, rounds, maxOps int) {
	e := newEnv(t, url)
	e.seed()
	e.exec(`SELECT setval(pg_get_serial_sequence('storage.index', 'id'), 1000)`) // seed's ids are explicit
	for _, q := range tc.setup {
		e.exec(q)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	cfg := e.config()
	cfg.Templates = tc.templates
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	e.run(cfg)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 20))
	n := 0 // generations inserted
	stale := 0
	for round := range rounds {
		// Other tables' changes, from three sessions, the whole round.
		wctx, stopWriters := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var otherErr atomic.Value
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; wctx.Err() == nil; i++ {
					_, err := pool.Exec(wctx, `INSERT INTO storage.index (indexname, access_method) VALUES ($1, $2) ON CONFLICT (indexname) DO UPDATE SET access_method = excluded.access_method`,
						fmt.Sprintf("w%d_%d", w, i%20), fmt.Sprintf("m%d", i))
					if err != nil && wctx.Err() == nil {
						otherErr.Store(err)
						return
					}
				}
			}()
		}
		ops := maxOps/2 + rng.IntN(maxOps/2)
		killAt := rng.IntN(ops)
		for i := range ops {
			if round == 0 && i == ops/2 {
				for _, q := range tc.late {
					e.exec(q)
				}
			}
			if i == killAt {
				if rng.IntN(4) == 0 {
					// A new agent: a start-up with replay.
					e.stop()
					e.start(cfg)
				} else {
					// Like SIGKILL: the sessions end without shutting
					// down; the agent reconnects and replays from the
					// store's checkpoint.
					e.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lenkwerk-agent'`)
				}
			}
			if e.rows(tc.table) > 1 && rng.IntN(3) == 0 {
				e.exec(tc.del())
			} else {
				n++
				e.exec(tc.insert(n))
			}
		}
		stopWriters()
		wg.Wait()
		if err, _ := otherErr.Load().(error); err != nil {
			t.Fatalf("other tables' writer: %v", err)
		}
		marker := fmt.Sprintf("r%d", round)
		e.exec(`INSERT INTO storage.index (indexname, access_method) VALUES ('marker', $1) ON CONFLICT (indexname) DO UPDATE SET access_method = excluded.access_method`, marker)
		var markerKey string
		if err := e.db.QueryRow(ctx, `SELECT '/Index/' || id FROM storage.index WHERE indexname = 'marker'`).Scan(&markerKey); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the round's marker in the store", 30*time.Second, func() bool {
			v, ok := e.get(markerKey)
			return ok && jsonField(t, v, "access_method") == strconv.Quote(marker)
		})
		// Everything committed before the marker is in the store now.
		var want *string
		if err := e.db.QueryRow(ctx, tc.newest()).Scan(&want); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		got, ok := e.get(tc.key)
		switch {
		case want == nil && ok:
			stale++
			t.Errorf("round %d: %s = %s, want absent (the table is empty)", round, tc.key, got)
		case want != nil && !ok:
			stale++
			t.Errorf("round %d: %s absent, want %s", round, tc.key, *want)
		case want != nil && !sameJSON(t, got, *want):
			stale++
			t.Errorf("round %d: %s = %s, want the newest row %s", round, tc.key, got, *want)
		}
	}
	t.Logf("%s: %d of %d rounds ended with %s not the newest row", tc.name, stale, rounds, tc.key)
	if stale == 0 { // else the comparison would only wait 30 s to say it again
		e.converged(converge.Options{Templates: tc.templates})
	}
}

// rows counts the table's rows.
func (e *env) rows(table string) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// sameJSON compares two JSON texts as values.
func sameJSON(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

// slowStandby is a synchronous standby (the server must list lw_sync in
// synchronous_standby_names) that confirms what it received delay later:
// every commit on the server waits that long between the flush of its WAL
// (when logical decoding may send it) and its visibility to other
// sessions. It streams the WAL physically from a temporary slot until the
// test ends.
func slowStandby(t *testing.T, c *pgtest.Cluster, delay time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg, err := pgconn.ParseConfig(c.URL("postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = "lw_sync"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, "lw_sync", "", pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.PhysicalReplication}); err != nil {
		t.Fatal(err)
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, "lw_sync", sys.XLogPos, pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
		conn.Close(context.Background())
	})
	go func() {
		defer close(done)
		type rcv struct {
			at  time.Time
			end pglogrepl.LSN
		}
		var queue []rcv
		confirmed := sys.XLogPos
		for ctx.Err() == nil {
			now := time.Now()
			for len(queue) > 0 && now.Sub(queue[0].at) >= delay {
				confirmed = max(confirmed, queue[0].end)
				queue = queue[1:]
			}
			_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
				WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed, ClientTime: now,
			})
			rctx, rcancel := context.WithTimeout(ctx, delay/4)
			msg, err := conn.ReceiveMessage(rctx)
			rcancel()
			if err != nil {
				if pgconn.Timeout(err) {
					continue
				}
				if ctx.Err() == nil {
					t.Errorf("slow standby: %v", err)
				}
				return
			}
			cd, ok := msg.(*pgproto3.CopyData)
			if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
				continue
			}
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				t.Errorf("slow standby: %v", err)
				return
			}
			queue = append(queue, rcv{time.Now(), x.WALStart + pglogrepl.LSN(len(x.WALData))})
		}
	}()
}

// An agent that is itself a synchronous standby would wait for ever for a
// transaction on a single-key table that waits for the agent: it fails
// saying so, and goes on once it is no longer one.
func TestSingleKeySyncStandbyAgent(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"synchronous_commit": "on"}})
	e := newEnv(t, c.NewDatabase(t))
	e.seed()
	a := e.run(e.config())
	e.converged(converge.Options{})
	ctx := context.Background()
	release := func() {
		e.exec(`ALTER SYSTEM RESET synchronous_standby_names`)
		e.exec(`SELECT pg_reload_conf()`)
	}
	t.Cleanup(release) // before the agent stops: the commit below waits for it
	e.exec(`ALTER SYSTEM SET synchronous_standby_names = '"lenkwerk-agent"'`)
	e.exec(`SELECT pg_reload_conf()`)
	waitFor(t, "the agent listed as a synchronous standby", 10*time.Second, func() bool {
		var st string
		_ = e.db.QueryRow(ctx, `SELECT sync_state FROM pg_stat_replication WHERE application_name = 'lenkwerk-agent'`).Scan(&st)
		return st == "sync"
	})
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	committed := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, `SELECT storage.save_servermap('{"gen": 2}')`)
		committed <- err
	}()
	waitFor(t, "the agent to fail on its synchronous standby role", 30*time.Second, func() bool {
		err := a.Status().Err
		return err != nil && strings.Contains(err.Error(), "synchronous standby")
	})
	select {
	case err := <-committed:
		t.Fatalf("the commit returned (%v) while the agent could not confirm it", err)
	default:
	}
	release()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	if got := jsonField(t, mustGet(t, e, "/Servermap"), "server_map"); got != `{"gen": 2}` {
		t.Fatalf("/Servermap = %s, want generation 2", got)
	}
}
