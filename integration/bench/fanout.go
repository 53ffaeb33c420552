package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
)

// FanoutResult is one run of the fan-out scenario: n consumers, each with
// a Store of its own, watching the Bagger tree the agent mirrors.
type FanoutResult struct {
	Consumers int
	// Steady is commit → event latency over every consumer and every
	// transaction of the steady stream; Burst over every consumer and
	// every key of the one rotation transaction.
	Steady, Burst Latencies
	// BurstKeys is the number of keys the rotation rewrites.
	BurstKeys int
	// Connections are the client backends of the PostgreSQL cluster
	// (every database: source, agent, pgkv) and the open TCP connections
	// of the etcd member, while the consumers watch.
	PGConnections, EtcdConnections int
	// CPU is what the parts used from the first steady write to the
	// burst's last delivery, over Elapsed.
	CPU     CPU
	Elapsed time.Duration
}

// Fanout opens n consumers on kind's store, each its own Store (its own
// connections, as separate storage-node processes would have) watching
// the agent's whole tree, then writes steady transactions at rate per
// second through Bagger's storage.save_config, then one transaction that
// rewrites burst keys at once (a servermap rotation), and measures from the
// start of each commit to each consumer receiving each key.
func (e *Env) Fanout(ctx context.Context, kind StoreKind, n, steady int, rate float64, burst int) (res FanoutResult, err error) {
	res.Consumers, res.BurstKeys = n, burst
	st, err := e.startStreaming(ctx, kind, "fan", nil)
	if err != nil {
		return res, err
	}
	defer st.Close()
	a, prefix := st.agent, st.prefix

	total := warmup + steady
	consumers := make([]*consumer, n)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range consumers {
		s, err := e.openPrivate(ctx, kind)
		if err != nil {
			return res, fmt.Errorf("consumer %d: %w", i, err)
		}
		defer s.Close()
		c := &consumer{steady: make([]time.Time, total), burst: make([]time.Time, burst), left: total + burst, err: make(chan error, 1)}
		consumers[i] = c
		_, rev, err := s.List(ctx, prefix)
		if err != nil {
			return res, fmt.Errorf("consumer %d: list: %w", i, err)
		}
		ch := s.Watch(wctx, prefix, rev)
		wg.Go(func() { c.run(ch) })
	}

	cpu0 := e.cpuNow(a.pid())
	t0 := time.Now()
	steadyStart, err := st.writeSteady(ctx, total, rate, func() (err error) {
		res.PGConnections, res.EtcdConnections, err = e.connections(ctx, st.src)
		return err
	})
	if err != nil {
		return res, err
	}
	// The rotation: one transaction, every key at once, after the steady
	// stream has been delivered so the two do not mix.
	if err := waitConsumers(ctx, consumers, func(c *consumer) bool { return c.left == burst }); err != nil {
		return res, fmt.Errorf("steady: %w", err)
	}
	burstStart := time.Now()
	if err := st.writeRotation(ctx, burst); err != nil {
		return res, err
	}
	if err := waitConsumers(ctx, consumers, func(c *consumer) bool { return c.left == 0 }); err != nil {
		return res, fmt.Errorf("rotation: %w", err)
	}
	res.Elapsed = time.Since(t0)
	res.CPU = e.cpuNow(a.pid()).sub(cpu0)
	if err := a.exited(); err != nil {
		return res, err
	}

	var sl, bl []time.Duration
	var last time.Time
	for _, c := range consumers {
		c.mu.Lock()
		for i := warmup; i < total; i++ {
			sl = append(sl, c.steady[i].Sub(steadyStart[i]))
		}
		for _, t := range c.burst {
			bl = append(bl, t.Sub(burstStart))
			if t.After(last) {
				last = t
			}
		}
		c.mu.Unlock()
	}
	res.Steady = summarize(sl, []time.Duration{0}, 0)
	res.Burst = summarize(bl, []time.Duration{0}, last.Sub(burstStart))
	return res, nil
}

// consumer records when each key reached one watcher.
type consumer struct {
	mu            sync.Mutex
	steady, burst []time.Time
	left          int
	err           chan error
}

func (c *consumer) run(ch <-chan kvdriver.WatchResponse) {
	for r := range ch {
		now := time.Now()
		if r.Err != nil {
			c.err <- r.Err
			return
		}
		c.mu.Lock()
		for _, ev := range r.Events {
			if ev.Type != kvdriver.OpPut {
				continue
			}
			name := ev.Key[strings.LastIndexByte(ev.Key, '/')+1:]
			var list []time.Time
			switch {
			case strings.HasPrefix(name, "lat-"):
				list = c.steady
			case strings.HasPrefix(name, "rot-"):
				list = c.burst
			default:
				continue
			}
			i, err := strconv.Atoi(name[4:])
			if err != nil || i < 0 || i >= len(list) || !list[i].IsZero() {
				continue
			}
			list[i] = now
			c.left--
		}
		c.mu.Unlock()
	}
}

// waitConsumers waits until every consumer satisfies ok, for at most a
// minute.
func waitConsumers(ctx context.Context, cs []*consumer, ok func(*consumer) bool) error {
	deadline := time.Now().Add(time.Minute)
	for i, c := range cs {
		for {
			c.mu.Lock()
			done, left := ok(c), c.left
			c.mu.Unlock()
			if done {
				break
			}
			select {
			case err := <-c.err:
				return fmt.Errorf("consumer %d: watch: %w", i, err)
			case <-ctx.Done():
				return ctx.Err()
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("consumer %d: %d keys not received within a minute", i, left)
			}
			time.Sleep(2 * time.Millisecond) // poll interval
		}
	}
	return nil
}

// openPrivate opens a Store with connections of its own: for etcd a
// client not shared with the process's other Stores.
func (e *Env) openPrivate(ctx context.Context, kind StoreKind) (*kvdriver.Store, error) {
	if kind != Etcd {
		return e.OpenStore(ctx, kind)
	}
	cfg, err := etcd.ParseURL(e.StoreURL(kind))
	if err != nil {
		return nil, err
	}
	cfg.PrivateClient = true
	s, err := etcd.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: open etcd: %w", err)
	}
	return s, nil
}

// connections counts the PostgreSQL cluster's client backends (but the
// benchmark's connections to the follow fan-out's local copies) and the
// etcd member's established client connections.
func (e *Env) connections(ctx context.Context, src *Source) (pg, etcdConns int, err error) {
	if err := src.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('client backend', 'walsender') AND application_name <> $1`, copyAppName).Scan(&pg); err != nil {
		return 0, 0, fmt.Errorf("bench: pg_stat_activity: %w", err)
	}
	_, port, _ := strings.Cut(e.Etcd.Endpoint(), ":")
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			// local_address is field 1, st field 3 (01: established).
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "01" {
				etcdConns++
			}
		}
		fh.Close()
	}
	return pg, etcdConns, nil
}
