package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"

	"github.com/bagger/lenkwerk/integration/certs"
)

// TestChain checks the issued certificates verify against the CA for
// their purpose and host, fail for another host, and the key modes.
func TestChain(t *testing.T) {
	ca, err := certs.NewCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("server", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Client("lenkwerk_agent")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server cert for %s: %v", host, err)
		}
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "example.com"}); err == nil {
		t.Error("server cert verifies for example.com")
	}
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert: %v", err)
	}
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client cert verifies as a server cert")
	}
	if got, want := cli.Cert.Subject.CommonName, "lenkwerk_agent"; got != want {
		t.Errorf("client CN = %q, want %q", got, want)
	}
	other, err := certs.NewCA(t.TempDir(), "other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherPool := x509.NewCertPool()
	otherPool.AddCert(other.Cert)
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: otherPool, DNSName: "127.0.0.1"}); err == nil {
		t.Error("server cert verifies against another CA")
	}
	for _, p := range []certs.Pair{srv, cli} {
		if _, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile); err != nil {
			t.Errorf("load %s: %v", p.CertFile, err)
		}
		st, err := os.Stat(p.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != 0o600 {
			t.Errorf("%s mode %o, want 600", p.KeyFile, got)
		}
	}
}
