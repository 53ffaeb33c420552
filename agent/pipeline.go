package agent

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

// The pipeline applies store batches on a goroutine of its own, the
// applier, while the session goroutine goes on receiving and decoding the
// stream (or reading a table copy), so neither the store nor the decoding
// waits for the other.
//
// Order is kept: the applier writes one batch at a time, in the order the
// session handed them over. What the session hands over while a batch is
// in flight waits in one pending write, and consecutive parts are
// merged (group commit) as long as the merged batch fits the store's limits
// and they touch distinct keys: many small transactions become one store
// write whose checkpoint is the last one's. A store revision may so hold
// several source transactions, each whole; a transaction larger than a
// batch is written in chunks. A key two transactions
// write goes into two batches, so a watcher sees every committed value of
// every key, in order.
//
// The session learns what the store acknowledged by reaping the
// applier's results: only then does it move its checkpoint, confirm the
// position to PostgreSQL and count the transactions. So the slot is never
// confirmed past what the store has.
// Memory stays bounded: one batch in flight, one pending, and the
// transaction being decoded.
//
// Everything that must see the store up to date first waits for the
// pipeline to drain (sync): listing the store (truncate, table copies),
// the idle keepalive checkpoint, copies of added tables.

// commitInfo describes a transaction handed to the applier, for the
// bookkeeping done once the store has it.
type commitInfo struct {
	xid       uint32
	commitLSN pglogrepl.LSN
	endLSN    pglogrepl.LSN
	time      time.Time // commit time
	rows      int
}

// batch is the session's work for the store: operations on distinct keys
// and, when it completes a transaction, a table copy or an idle position,
// the checkpoint written after them in the same store batch. submit cuts
// it into parts that each fit one store batch; the checkpoint and the
// transaction go with the last part.
type batch struct {
	ops   []kvdriver.Op // distinct keys
	ck    *Checkpoint   // written last, encoded by the applier (nil: a chunk)
	txn   *commitInfo   // the transaction it completes (nil: none)
	bytes int           // key and value bytes of ops (set by submit)
}

// result is what one store write acknowledged.
type result struct {
	ck    *Checkpoint // last checkpoint in the write (nil: none)
	txns  []commitInfo
	parts int // parts it covered
}

type pipeline struct {
	s *session

	mu      sync.Mutex
	pending []batch  // parts to merge into the next store write
	ops     int      // operations in pending, checkpoints not counted
	bytes   int      // their key and value bytes
	hasCk   bool     // pending carries a checkpoint
	queued  int      // parts not yet acknowledged or failed
	done    []result // acknowledged, not yet reaped
	err     error    // the applier failed and stopped
	wake    context.CancelFunc

	work   chan struct{} // pending is not empty
	ready  chan struct{} // a result, a failure, or room in pending
	cancel context.CancelFunc
	exited chan struct{}
}

func newPipeline(s *session) *pipeline {
	return &pipeline{
		s:      s,
		work:   make(chan struct{}, 1),
		ready:  make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// start runs the applier until ctx is done, stop is called, or a batch
// fails for good.
func (p *pipeline) start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	go func() {
		defer close(p.exited)
		p.run(ctx)
	}()
}

// stop ends the applier and waits for it: a batch of an ended session must
// not reach the store after the next session read the checkpoint.
func (p *pipeline) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.exited
}

func (p *pipeline) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			p.fail(ctx.Err())
			return
		case <-p.work:
		}
		for {
			parts := p.take()
			if len(parts) == 0 {
				break
			}
			signal(p.ready) // room for the session
			ops, res := p.merge(parts)
			if err := p.s.w.apply(ctx, ops); err != nil {
				p.fail(err)
				return
			}
			p.mu.Lock()
			p.done = append(p.done, res)
			p.queued -= res.parts
			wake := p.wake
			p.mu.Unlock()
			signal(p.ready)
			if wake != nil {
				wake()
			}
		}
	}
}

// take removes from pending the longest run of parts that touch
// distinct keys, which becomes the next batch. A key written by two
// transactions is written twice, in two batches: merging would keep only
// the later value, and a watcher would miss a committed state of the key
// (a node going offline and back). So group commit never loses a
// committed value; it only makes several transactions visible at one
// store revision.
func (p *pipeline) take() []batch {
	p.mu.Lock()
	pending := p.pending
	p.mu.Unlock()
	n := len(pending)
	if n > 1 {
		// Outside the lock: the session appends meanwhile, only the
		// applier removes.
		seen := make(map[string]struct{}, len(pending[0].ops)*2)
		n = 0
	run:
		for _, h := range pending {
			if n > 0 {
				for _, op := range h.ops {
					if _, dup := seen[op.Key]; dup {
						break run
					}
				}
			}
			for _, op := range h.ops {
				seen[op.Key] = struct{}{}
			}
			n++
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	parts := p.pending[:n:n]
	p.pending = slices.Clone(p.pending[n:])
	p.ops, p.bytes, p.hasCk = 0, 0, false
	for _, h := range p.pending {
		p.ops += len(h.ops)
		p.bytes += h.bytes
		p.hasCk = p.hasCk || h.ck != nil
	}
	return parts
}

func (p *pipeline) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	wake := p.wake
	p.mu.Unlock()
	signal(p.ready)
	if wake != nil {
		wake()
	}
}

// merge builds one store batch of consecutive parts with distinct
// keys (take): their operations in order, then the last checkpoint.
func (p *pipeline) merge(parts []batch) ([]kvdriver.Op, result) {
	res := result{parts: len(parts)}
	var ops []kvdriver.Op
	if len(parts) == 1 {
		ops = parts[0].ops
	} else {
		n := 0
		for _, h := range parts {
			n += len(h.ops)
		}
		ops = make([]kvdriver.Op, 0, n+1)
		for _, h := range parts {
			ops = append(ops, h.ops...)
		}
	}
	for _, h := range parts {
		if h.ck != nil {
			res.ck = h.ck
		}
		if h.txn != nil {
			res.txns = append(res.txns, *h.txn)
		}
	}
	if res.ck != nil {
		ops = append(ops[:len(ops):len(ops)], kvdriver.Put(p.s.a.ckptKey, res.ck.value()))
	}
	return ops, res
}

// enqueue queues part h for the applier, waiting while the pending write
// has no room for it (the store is the bottleneck then; the replication
// connection is kept alive meanwhile).
func (s *session) enqueue(ctx context.Context, h batch) error {
	p := s.pipe
	hasCk := h.ck != nil
	return s.waitPipeline(ctx, func() bool {
		ops, bytes := p.ops+len(h.ops), p.bytes+h.bytes
		if hasCk || p.hasCk {
			// The merged batch carries one checkpoint.
			ops++
			bytes += s.ckReserve
		}
		if len(p.pending) > 0 && (ops > s.lim.ops || bytes > s.lim.bytes) {
			return false
		}
		p.pending = append(p.pending, h)
		p.ops += len(h.ops)
		p.bytes += h.bytes
		p.hasCk = p.hasCk || hasCk
		p.queued++
		signal(p.work)
		return true
	})
}

// submit hands b to the applier in parts that fit a store batch; the
// last part carries the checkpoint and the transaction. It returns once
// every part is queued, not written (see write, sync).
func (s *session) submit(ctx context.Context, b batch) error {
	parts := split(b.ops, s.lim.ops, s.lim.bytes)
	hs := make([]batch, len(parts), len(parts)+1)
	for i, part := range parts {
		hs[i].ops = part
		for _, op := range part {
			hs[i].bytes += len(op.Key) + len(op.Value)
		}
	}
	if b.ck != nil {
		// The checkpoint goes with the last part if it fits, else alone.
		if n := len(hs); n == 0 || len(hs[n-1].ops)+1 > s.lim.ops || hs[n-1].bytes+s.ckReserve > s.lim.bytes {
			hs = append(hs, batch{})
		}
		last := &hs[len(hs)-1]
		last.ck, last.txn = b.ck, b.txn
	}
	for _, h := range hs {
		if err := s.enqueue(ctx, h); err != nil {
			return err
		}
	}
	return nil
}

// sync waits until the store has everything handed over, and reaps it.
func (s *session) sync(ctx context.Context) error {
	p := s.pipe
	return s.waitPipeline(ctx, func() bool { return p.queued == 0 })
}

// waitPipeline reaps results until cond, called under the pipeline's lock,
// holds; it fails with the applier's error. Standby status updates go on
// meanwhile: a store write may take longer than wal_sender_timeout.
func (s *session) waitPipeline(ctx context.Context, cond func() bool) error {
	p := s.pipe
	var tick *time.Ticker
	for {
		if err := s.reap(); err != nil {
			return err
		}
		p.mu.Lock()
		ok := cond()
		p.mu.Unlock()
		if ok {
			return nil
		}
		if tick == nil {
			tick = time.NewTicker(s.a.cfg.StatusInterval / 2)
			defer tick.Stop()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.ready:
		case <-tick.C:
			s.keepalive()
		}
	}
}

// reap does the session's side of what the store acknowledged: the
// checkpoint moves, transactions are counted, the position is confirmed.
// It returns the applier's error once the applier has failed.
func (s *session) reap() error {
	p := s.pipe
	p.mu.Lock()
	done, err := p.done, p.err
	p.done = nil
	p.mu.Unlock()
	for _, r := range done {
		s.acknowledge(r)
	}
	return err
}

// setWake makes a finished batch interrupt the receive loop's wait for the
// next message (wake is its context's cancel), so the session confirms
// without waiting for the next message or status interval. A result
// already waiting wakes at once.
func (p *pipeline) setWake(wake context.CancelFunc) {
	p.mu.Lock()
	p.wake = wake
	now := wake != nil && (len(p.done) > 0 || p.err != nil)
	p.mu.Unlock()
	if now {
		wake()
	}
}

func (s *session) acknowledge(r result) {
	if r.ck != nil {
		s.ckpt = *r.ck
		s.confirmed = max(s.confirmed, r.ck.LSN)
		s.a.checkpointed(r.ck.LSN)
	}
	if len(r.txns) == 0 {
		return
	}
	now := time.Now()
	for _, t := range r.txns {
		lag := now.Sub(t.time)
		s.a.met.txns.Inc()
		s.a.met.rows.Add(float64(t.rows))
		s.a.met.applyLatency.Observe(max(lag, 0).Seconds())
		s.a.log.Debug("transaction applied", "xid", t.xid, "commit_lsn", t.commitLSN, "end_lsn", t.endLSN, "rows", t.rows)
	}
	s.outstanding = s.outstanding[min(len(r.txns), len(s.outstanding)):]
	s.a.update(func(st *Status) { st.Transactions += int64(len(r.txns)) })
	s.a.mu.Lock()
	s.a.lastLag = now.Sub(r.txns[len(r.txns)-1].time)
	s.a.mu.Unlock()
	s.checkCaughtUp()
	s.setServerEnd(s.serverEnd)
	s.updatePending()
	s.sendStatus()
}

// updatePending sets the commit time of the oldest transaction the store
// does not have yet (for the lag): handed over, or being received.
func (s *session) updatePending() {
	var t time.Time
	switch {
	case len(s.outstanding) > 0:
		t = s.outstanding[0]
	case s.dec.inTxn && !s.dec.skipTxn:
		t = s.dec.txnTime
	}
	s.a.mu.Lock()
	s.a.pendingSince = t
	s.a.mu.Unlock()
}

// idle reports whether everything handed over is in the store.
func (p *pipeline) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queued == 0
}

// failure is the applier's error once it stopped (nil if none).
func (p *pipeline) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}
