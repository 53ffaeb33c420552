// Package certs generates a throwaway certificate authority and the server
// and client certificates signed by it, for tests that run PostgreSQL and
// etcd with TLS and client-certificate authentication.
//
//	ca, err := certs.NewCA(t.TempDir(), "lenkwerk test CA")
//	srv, err := ca.Server("server", "127.0.0.1", "localhost")
//	cli, err := ca.Client("lenkwerk_agent") // CN = PostgreSQL role / etcd user
//
// Keys are ECDSA P-256, written with mode 0600 (PostgreSQL refuses a key
// others can read); certificates are 0644. Certificates are valid from an
// hour ago (clock skew) for a day.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Pair is a certificate and its private key, as PEM files.
type Pair struct {
	// CertFile and KeyFile are the paths of the PEM certificate and key.
	CertFile, KeyFile string
	// Cert is the parsed certificate.
	Cert *x509.Certificate
}

// CA is a certificate authority whose files live in one directory.
type CA struct {
	// Dir holds every file the CA writes.
	Dir string
	// CertFile is the CA certificate (PEM), the file clients and servers
	// trust (sslrootcert, ssl_ca_file, --trusted-ca-file).
	CertFile string
	// Cert is the parsed CA certificate.
	Cert *x509.Certificate

	key *ecdsa.PrivateKey
}

// NewCA creates a CA named cn and writes its certificate to dir/ca.crt.
func NewCA(dir, cn string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: CA key: %w", err)
	}
	tmpl, err := template(cn)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certs: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	ca := &CA{Dir: dir, CertFile: filepath.Join(dir, "ca.crt"), Cert: cert, key: key}
	if err := writePEM(ca.CertFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// Server issues a server certificate named name (files name.crt and
// name.key) for hosts: IP addresses go into the IP SANs, the rest into the
// DNS SANs. The certificate is valid for client authentication too, as
// etcd members need when they talk to each other.
func (ca *CA) Server(name string, hosts ...string) (Pair, error) {
	if len(hosts) == 0 {
		return Pair{}, errors.New("certs: a server certificate needs at least one host")
	}
	tmpl, err := template(hosts[0])
	if err != nil {
		return Pair{}, err
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return ca.issue(name, tmpl)
}

// Client issues a client certificate whose common name is cn (files
// name.crt and name.key, name being cn). PostgreSQL's cert authentication
// maps the CN to the role of the same name; etcd with --client-cert-auth
// and auth enabled takes the CN as the user when no password is given.
func (ca *CA) Client(cn string) (Pair, error) {
	return ca.ClientNamed(cn, cn)
}

// ClientNamed is Client with files named name.crt and name.key.
func (ca *CA) ClientNamed(name, cn string) (Pair, error) {
	tmpl, err := template(cn)
	if err != nil {
		return Pair{}, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.issue(name, tmpl)
}

func (ca *CA) issue(name string, tmpl *x509.Certificate) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: %s key: %w", name, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: %s certificate: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: %s key: %w", name, err)
	}
	p := Pair{CertFile: filepath.Join(ca.Dir, name+".crt"), KeyFile: filepath.Join(ca.Dir, name+".key"), Cert: cert}
	if err := writePEM(p.CertFile, "CERTIFICATE", der, 0o644); err != nil {
		return Pair{}, err
	}
	if err := writePEM(p.KeyFile, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return Pair{}, err
	}
	return p, nil
}

// template is a certificate template with a fresh serial and validity.
func template(cn string) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Lenkwerk tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
	}, nil
}

// writePEM writes one PEM block with mode perm (also when the file
// existed with another mode).
func writePEM(path, typ string, der []byte, perm os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, perm); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

// Chown gives path to the user and group ids, e.g. a server key to the
// postgres user when the test runs as root (PostgreSQL wants its key owned
// by itself with mode 0600, or by root with mode 0640).
func Chown(path string, uid, gid int) error {
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}
