package pgkv_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// notificationDropper is a TCP proxy to PostgreSQL that swallows every
// NotificationResponse, as a transaction-pooling proxy effectively does
// (the LISTEN stays on a server connection the client no longer holds).
type notificationDropper struct {
	ln      net.Listener
	target  string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	dropped int
}

func startNotificationDropper(t *testing.T, target string) *notificationDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &notificationDropper{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *notificationDropper) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
		go func() { defer p.wg.Done(); p.serverToClient(s, c); c.Close() }()
	}
}

// serverToClient forwards typed backend messages (sslmode=disable: no
// untyped SSL answer) except 'A', NotificationResponse.
func (p *notificationDropper) serverToClient(s, c net.Conn) {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(s, body); err != nil {
			return
		}
		if hdr[0] == 'A' {
			p.mu.Lock()
			p.dropped++
			p.mu.Unlock()
			continue
		}
		if _, err := c.Write(append(hdr[:], body...)); err != nil {
			return
		}
	}
}

func (p *notificationDropper) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestProbeDetectsLostNotifications: behind a proxy that loses every
// notification, the listener's probe never returns; NotifyErr says so
// (ErrNotifyUnavailable) and watches still deliver by polling.
func TestProbeDetectsLostNotifications(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startNotificationDropper(t, u.Host)
	u.Host = "127.0.0.1:" + strconv.Itoa(proxy.ln.Addr().(*net.TCPAddr).Port)
	s := openStore(t, withParams(u.String(), "probe-timeout", "300ms", "poll-interval", "250ms"))
	ctx := ctxT(t)
	w := collect(s.Watch(ctx, "/b", 0))
	waitFor(t, "the probe to time out", 10*time.Second, func() bool {
		return errors.Is(pgkv.NotifyErr(s), pgkv.ErrNotifyUnavailable)
	})
	rev, err := s.Put(ctx, "/b/x", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	w.until(t, rev, 5*time.Second)
	proxy.mu.Lock()
	dropped := proxy.dropped
	proxy.mu.Unlock()
	if dropped == 0 {
		t.Fatal("the proxy dropped no notification: the test proves nothing")
	}
	t.Logf("NotifyErr: %v", pgkv.NotifyErr(s))
}
