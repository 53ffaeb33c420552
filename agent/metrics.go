package agent

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, all labelled with the store's name (Config.Name), so one
// process fanning out to several stores reports each stream apart:
//
//	lenkwerk_agent_transactions_applied_total{store}       counter
//	lenkwerk_agent_rows_applied_total{store}               counter
//	lenkwerk_agent_apply_latency_seconds{store}            histogram: commit time (server clock) → store ack
//	lenkwerk_agent_store_write_duration_seconds{store}     histogram: one store batch write
//	lenkwerk_agent_replication_lag_bytes{store}            gauge
//	lenkwerk_agent_replication_lag_seconds{store}          gauge
//	lenkwerk_agent_reconnects_total{store,cause}           counter
//	lenkwerk_agent_errors_total{store,kind}                counter
//	lenkwerk_agent_changes_skipped_total{store}            counter: changes left out by `lenkwerk skip`
//	lenkwerk_agent_transaction_chunks_total{store}         counter: parts of transactions larger than a batch
//	lenkwerk_agent_tables_copied_total{store}              counter: tables copied from a snapshot
//	lenkwerk_agent_role{store,role}                        gauge: 1 for the current role (active, standby, blocked, down)
//	lenkwerk_agent_retained_wal_bytes{store}               gauge
//	lenkwerk_agent_resyncs_total{store,cause}              counter: full copies, by cause (resyncCauses:
//	                                                       no_checkpoint, slot_missing, slot_undecodable,
//	                                                       slot_wal_removed, slot_invalidated, slot_ahead,
//	                                                       other_system, history_diverged)
//
// cause and kind are one of slot_in_use, database, store, value, data,
// fenced, other.
const metricsNamespace = "lenkwerk_agent"

// Error kinds (label kind of lenkwerk_agent_errors_total and cause of
// lenkwerk_agent_reconnects_total).
const (
	kindSlotInUse = "slot_in_use"
	kindDatabase  = "database"
	kindStore     = "store"
	kindData      = "data"
	kindOther     = "other"
	// kindValue: a change the agent cannot mirror (ValueError).
	kindValue = "value"
	// kindFenced: another agent advanced the store's checkpoint.
	kindFenced = "fenced"
)

// kinds are every error kind: each series exists from the start, at 0, so
// that an alert on its increase fires at the first error and the shipped
// rules can be checked against a live agent's /metrics
// (docker/prometheus).
var kinds = []string{kindSlotInUse, kindDatabase, kindStore, kindValue, kindData, kindFenced, kindOther}

// Metrics are the agents' Prometheus metrics. Create one per registry with
// NewMetrics and share it between the agents of one process (Config.Metrics);
// each agent reports under its own store label.
type Metrics struct {
	txns, rows   *prometheus.CounterVec
	applyLatency *prometheus.HistogramVec
	storeWrite   *prometheus.HistogramVec
	reconnects   *prometheus.CounterVec
	errs         *prometheus.CounterVec
	skipped      *prometheus.CounterVec
	resyncs      *prometheus.CounterVec
	chunks       *prometheus.CounterVec
	tableCopies  *prometheus.CounterVec
	live         *liveCollector
}

// NewMetrics registers the agent metrics with reg (a registry of its own,
// not the global default, so several agents can live in one test process).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		txns: counterVec("transactions_applied_total",
			"Transactions applied to the store (with their checkpoint).",
			"store"),
		rows: counterVec("rows_applied_total",
			"Row changes (insert, update, delete) of applied transactions.",
			"store"),
		applyLatency: histogramVec("apply_latency_seconds",
			"Time from a transaction's commit (PostgreSQL's clock) to the store's acknowledgement of its last batch.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
			"store"),
		storeWrite: histogramVec("store_write_duration_seconds",
			"Duration of one store batch write (every attempt, failed ones included).",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
			"store"),
		reconnects: counterVec("reconnects_total",
			"Sessions ended by a failure and started again, by cause (slot_in_use, database, store, value, data, fenced, other).",
			"store", "cause"),
		errs: counterVec("errors_total",
			"Errors by kind (slot_in_use, database, store, value, data, fenced, other); failed store attempts count each.",
			"store", "kind"),
		skipped: counterVec("changes_skipped_total",
			"Changes the agent could not mirror and left out as `lenkwerk skip` instructed.",
			"store"),
		resyncs: counterVec("resyncs_total",
			"Full copies of every published table, by cause: no_checkpoint, slot_missing, slot_undecodable (could not map filenode), slot_wal_removed (the WAL the slot needs is gone), slot_invalidated (the server invalidated the slot: max_slot_wal_keep_size), slot_ahead (the store lost changes), other_system (another database cluster), history_diverged (a failover or restore cut the checkpoint off the database's history).",
			"store", "cause"),
		chunks: counterVec("transaction_chunks_total",
			"Parts of transactions larger than a store batch, written while the transaction streams, before its last part and checkpoint: watchers see such a transaction in parts.",
			"store"),
		tableCopies: counterVec("tables_copied_total",
			"Tables copied from a snapshot: each table of a full copy (resyncs_total), a table added to the publication, a table whose columns changed.",
			"store"),
		live: &liveCollector{},
	}
	m.live.lagBytes = prometheus.NewDesc(metricsNamespace+"_replication_lag_bytes", "WAL the server has that the store does not have yet (server WAL end minus the applied position).", []string{"store"}, nil)
	m.live.lagSeconds = prometheus.NewDesc(metricsNamespace+"_replication_lag_seconds", "Age of the oldest change not yet in the store (0 when caught up).", []string{"store"}, nil)
	m.live.role = prometheus.NewDesc(metricsNamespace+"_role", "1 for the agent's current role for its slot: active (holds the slot, streams), standby (waits while another agent holds it), blocked (retries a change it cannot mirror) or down (connecting or retrying after a failure).", []string{"store", "role"}, nil)
	m.live.retained = prometheus.NewDesc(metricsNamespace+"_retained_wal_bytes", "WAL the slot holds back on the server, as of the last publication poll.", []string{"store"}, nil)
	for _, c := range []prometheus.Collector{m.txns, m.rows, m.applyLatency, m.storeWrite, m.reconnects, m.errs, m.skipped, m.resyncs, m.chunks, m.tableCopies, m.live} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// counterVec is a counter of the agent's namespace with the given labels.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Name: name, Help: help,
	}, labels)
}

// histogramVec is a histogram of the agent's namespace with the given
// buckets and labels.
func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets,
	}, labels)
}

// agentMetrics are the metrics of one agent (one store label).
type agentMetrics struct {
	txns, rows   prometheus.Counter
	applyLatency prometheus.Observer
	storeWrite   prometheus.Observer
	reconnects   *prometheus.CounterVec // cause
	errs         *prometheus.CounterVec // kind
	skipped      prometheus.Counter
	resyncs      *prometheus.CounterVec // cause
	chunks       prometheus.Counter
	tableCopies  prometheus.Counter
}

func (m *Metrics) forStore(name string) agentMetrics {
	l := prometheus.Labels{"store": name}
	for _, c := range resyncCauses {
		m.resyncs.WithLabelValues(name, c)
	}
	for _, k := range kinds {
		m.reconnects.With(prometheus.Labels{"store": name, "cause": k})
		m.errs.With(prometheus.Labels{"store": name, "kind": k})
	}
	return agentMetrics{
		txns:         m.txns.With(l),
		rows:         m.rows.With(l),
		applyLatency: m.applyLatency.With(l),
		storeWrite:   m.storeWrite.With(l),
		reconnects:   m.reconnects.MustCurryWith(l),
		errs:         m.errs.MustCurryWith(l),
		skipped:      m.skipped.With(l),
		resyncs:      m.resyncs.MustCurryWith(l),
		chunks:       m.chunks.With(l),
		tableCopies:  m.tableCopies.With(l),
	}
}

// liveCollector reports the gauges computed from the agents' state at
// scrape time (lag in seconds grows while a transaction waits).
type liveCollector struct {
	lagBytes, lagSeconds, role, retained *prometheus.Desc

	mu     sync.Mutex
	agents []*Agent
}

func (m *liveCollector) add(a *Agent) {
	m.mu.Lock()
	m.agents = append(m.agents, a)
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.lagBytes
	ch <- m.lagSeconds
	ch <- m.role
	ch <- m.retained
}

// Collect implements prometheus.Collector.
func (m *liveCollector) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	agents := append([]*Agent(nil), m.agents...)
	m.mu.Unlock()
	now := time.Now()
	for _, a := range agents {
		st := a.Status()
		name := a.cfg.Name
		ch <- prometheus.MustNewConstMetric(m.lagBytes, prometheus.GaugeValue, float64(st.LagBytes), name)
		ch <- prometheus.MustNewConstMetric(m.lagSeconds, prometheus.GaugeValue, a.lagSeconds(now).Seconds(), name)
		role := st.role()
		for _, r := range roles {
			v := 0.0
			if r == role {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(m.role, prometheus.GaugeValue, v, name, r)
		}
		ch <- prometheus.MustNewConstMetric(m.retained, prometheus.GaugeValue, float64(st.RetainedWAL), name)
	}
}

// storeError marks a failure of the store (after the in-place retries), as
// opposed to the database's, for the error kind.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// errorKind classifies an error for the metrics.
func errorKind(err error) string {
	var pgErr *pgconn.PgError
	var netErr net.Error
	var se *storeError
	var ve *ValueError
	switch {
	case isSlotActive(err):
		return kindSlotInUse
	case errors.As(err, &ve):
		return kindValue
	case errors.Is(err, kvdriver.ErrConflict):
		return kindFenced
	case errors.Is(err, kvdriver.ErrTooLarge), errors.Is(err, kvdriver.ErrInvalidKey), errors.Is(err, kvdriver.ErrInvalidValue):
		return kindData
	case errors.As(err, &se):
		return kindStore
	case errors.As(err, &pgErr), errors.As(err, &netErr), pgconn.Timeout(err), isConnErr(err), errors.Is(err, errStandby):
		return kindDatabase
	}
	return kindOther
}

// isConnErr reports errors of a broken PostgreSQL connection that carry
// no PgError (closed by the server, EOF on the socket).
func isConnErr(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce) || pgconn.SafeToRetry(err) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
