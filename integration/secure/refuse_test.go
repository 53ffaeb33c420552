package secure

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// TestRefused shows that what TLS and authentication must keep out stays
// out: plaintext, a server certificate from a CA the client does not
// trust, a client certificate from a CA the server does not trust, no
// client certificate, and a wrong password. Each error is checked for the
// reason, so a refusal for another cause does not pass.
func TestRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := newPKI(t)
	pg := startPG(t, p)
	etcd := startEtcd(t, p)

	t.Run("postgres", func(t *testing.T) {
		good := pg.url("postgres", p.postgres)
		conn, err := pgx.Connect(ctx, good)
		if err != nil {
			t.Fatalf("the good URL is refused too: %v", err)
		}
		conn.Close(ctx)
		wrongCA := strings.Replace(good, "sslrootcert=", "sslrootcert="+escape(p.other.CertFile)+"&x=", 1)
		for _, tc := range []struct {
			name, url string
			want      []string // any of these in the error
		}{
			{"plaintext", pg.url("postgres", p.postgres, "sslmode", "disable"), []string{"no encryption"}},
			{"plaintext replication", pg.url(agentRole, p.agent, "sslmode", "disable", "replication", "database"), []string{"no encryption"}},
			{"sslmode=prefer falls back to nothing weaker", pg.url("postgres", certs.Pair{}, "sslmode", "prefer"), []string{"certificate authentication failed", "connection requires a valid client certificate"}},
			{"wrong CA for the server", wrongCA, []string{"certificate signed by unknown authority", "x509"}},
			{"client certificate of another CA", pg.url(agentRole, p.otherCli), []string{"unknown ca", "certificate", "bad certificate"}},
			{"no client certificate", pg.url(agentRole, certs.Pair{}), []string{"certificate authentication failed", "connection requires a valid client certificate"}},
			{"certificate of another role", pg.url("postgres", p.agent), []string{"certificate authentication failed"}},
		} {
			conn, err := pgx.Connect(ctx, tc.url)
			if err == nil {
				conn.Close(ctx)
				t.Errorf("%s: connection accepted", tc.name)
				continue
			}
			if !containsAny(err.Error(), tc.want) {
				t.Errorf("%s: refused with %v, want one of %q", tc.name, err, tc.want)
			}
		}
	})

	t.Run("etcd", func(t *testing.T) {
		good := etcd.url(t, p.etcdAgent, etcdUser, agentPass)
		s, err := kvdriver.Open(ctx, good)
		if err != nil {
			t.Fatalf("the good URL is refused too: %v", err)
		}
		s.Close()
		const wrongPass = "Wr0ng-etcd-Pa55"
		for _, tc := range []struct {
			name, url string
			probe     *tls.Config // a TLS config failing like the URL's
			reason    []string    // why the probe fails
		}{
			{"plaintext", "etcd://" + etcdUser + ":" + agentPass + "@" + etcd.endpoint + "?" + etcdTimeout + "&tls=false", nil, nil},
			{"no client certificate", etcd.url(t, certs.Pair{}, etcdUser, agentPass), tlsConfig(t, p.ca, certs.Pair{}), []string{"certificate required", "bad certificate"}},
			{"wrong CA for the server", strings.Replace(good, "ca-file="+escape(p.ca.CertFile), "ca-file="+escape(p.other.CertFile), 1), tlsConfig(t, p.other, p.etcdAgent), []string{"certificate signed by unknown authority"}},
			{"client certificate of another CA", etcd.url(t, p.otherCli, etcdUser, agentPass), tlsConfig(t, p.ca, p.otherCli), []string{"unknown certificate authority", "bad certificate", "certificate required"}}, // Go withholds a certificate the server's CA list does not name,
			{"wrong password", etcd.url(t, p.etcdAgent, etcdUser, wrongPass), nil, nil},
			{"wrong password in the URL", strings.Replace(etcd.url(t, p.etcdAgent, "", ""), "etcd://", "etcd://"+etcdUser+":"+wrongPass+"@", 1), nil, nil},
		} {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				// The etcd client reports a failed handshake only as a
				// dial timeout; a handshake of our own shows the reason.
				if tc.probe != nil {
					err := tlsProbe(etcd.endpoint, tc.probe)
					if err == nil || !containsAny(err.Error(), tc.reason) {
						t.Errorf("%s: TLS handshake: %v, want one of %q", tc.name, err, tc.reason)
					}
				}
				s, err := kvdriver.Open(ctx, tc.url)
				if err == nil {
					// A store that opened must still be unusable.
					_, err = s.Put(ctx, prefix+"/Config/refused", []byte(`1`))
					s.Close()
					if err == nil {
						t.Fatalf("%s: accepted", tc.name)
					}
				}
				t.Logf("%s: %v", tc.name, err)
				if tc.probe != nil && !containsAny(err.Error(), tc.reason) {
					t.Errorf("%s: Open error %v does not say why (one of %q)", tc.name, err, tc.reason)
				}
				if strings.Contains(err.Error(), wrongPass) || strings.Contains(err.Error(), agentPass) {
					t.Errorf("%s: the error shows a password: %v", tc.name, err)
				}
				if errors.Is(err, kvdriver.ErrInvalidURL) {
					t.Errorf("%s: refused as an invalid URL (%v), not by the server", tc.name, err)
				}
			})
		}
	})
}

// tlsConfig trusts ca and presents pair (zero Pair: no certificate).
func tlsConfig(t *testing.T, ca *certs.CA, pair certs.Pair) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	if pair.CertFile != "" {
		c, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// tlsProbe handshakes with addr and reads once: with TLS 1.3 the server
// refuses a client certificate only after the client's handshake is done,
// so its alert arrives on the first read.
func tlsProbe(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
