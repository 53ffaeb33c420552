package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// The metrics server's bounds. Prometheus and a health checker need a
// handful of connections; anyone who can reach the port must not be able
// to hold the agent's file descriptors, or keep /readyz from answering.
const (
	maxMetricsConns       = 32
	metricsHeaderTimeout  = 5 * time.Second
	metricsReadTimeout    = 10 * time.Second
	metricsWriteTimeout   = 30 * time.Second
	metricsIdleTimeout    = 60 * time.Second
	metricsMaxHeaderBytes = 16 << 10
)

// serveMetrics serves h on addr until stop is called.
func serveMetrics(addr string, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	bl := &boundedListener{Listener: ln, max: maxMetricsConns, conns: map[net.Conn]connEntry{}}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: metricsHeaderTimeout,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    metricsMaxHeaderBytes,
		ConnState:         bl.track,
	}
	go func() { _ = srv.Serve(bl) }()
	slog.Info("serving /metrics, /healthz, /readyz", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// boundedListener holds at most max connections. When a new one arrives
// at the limit, it closes the connection that has waited longest without
// a request in progress (idle keep-alive, or never sent one) to make
// room; if every one is busy, it closes the new connection. So idle or
// silent connections cannot lock out a health check, and busy ones are
// bounded by the server's read and write timeouts.
type boundedListener struct {
	net.Listener
	max int

	mu    sync.Mutex
	conns map[net.Conn]connEntry
}

type connEntry struct {
	state http.ConnState
	since time.Time
}

// Accept returns the next connection, making room as described above.
func (l *boundedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if len(l.conns) >= l.max {
			victim := l.oldestWaiting()
			if victim == nil {
				l.mu.Unlock()
				c.Close()
				continue
			}
			delete(l.conns, victim)
			victim.Close()
		}
		l.conns[c] = connEntry{state: http.StateNew, since: time.Now()}
		l.mu.Unlock()
		return c, nil
	}
}

// oldestWaiting is the connection without a request in progress that has
// been so the longest; nil if there is none. l.mu is held.
func (l *boundedListener) oldestWaiting() net.Conn {
	var oldest net.Conn
	var since time.Time
	for c, e := range l.conns {
		if e.state == http.StateActive {
			continue
		}
		if oldest == nil || e.since.Before(since) {
			oldest, since = c, e.since
		}
	}
	return oldest
}

// track is the server's ConnState hook.
func (l *boundedListener) track(c net.Conn, state http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	default:
		if _, ok := l.conns[c]; ok {
			l.conns[c] = connEntry{state: state, since: time.Now()}
		}
	}
}
