package etcd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.uber.org/zap"
)

// tlsConfig builds the client TLS config, or nil without TLS. Files are
// checked first so a typo gives an error naming the file and the parameter
// rather than a bare "no such file".
func (c Config) tlsConfig() (*tls.Config, error) {
	if !c.TLS {
		return nil, nil
	}
	for _, f := range []struct{ param, path string }{{"ca-file", c.CAFile}, {"cert-file", c.CertFile}, {"key-file", c.KeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("TLS %s: %w", f.param, err)
		}
	}
	info := transport.TLSInfo{
		CertFile:      c.CertFile,
		KeyFile:       c.KeyFile,
		TrustedCAFile: c.CAFile,
		Logger:        zap.NewNop(),
	}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS config (ca-file %q, cert-file %q, key-file %q): %w", c.CAFile, c.CertFile, c.KeyFile, err)
	}
	if c.CAFile != "" {
		// tlsutil accepts a file without any PEM certificate and yields an
		// empty pool, which would fail later as a handshake error.
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS ca-file: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("TLS ca-file %q: no PEM certificate in it", c.CAFile)
		}
	}
	cfg.MinVersion = tls.VersionTLS12
	return cfg, nil
}

// readPasswordFile returns the file's first line.
func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		// The error names the path, never the content.
		return "", fmt.Errorf("read password-file: %w", err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("password-file %q is empty", path)
	}
	return pw, nil
}
