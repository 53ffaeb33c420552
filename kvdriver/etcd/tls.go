package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

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

// handshakeReason explains a failed connect over TLS: the etcd client
// reports a refused handshake (unknown CA, missing or foreign client
// certificate) only as a dial timeout. It handshakes with the endpoints
// itself, within a second each, and returns " (TLS handshake with EP:
// REASON)" for the first failure, or "" without TLS or when the handshakes
// succeed.
func handshakeReason(ctx context.Context, cfg Config, tlsCfg *tls.Config) string {
	if tlsCfg == nil {
		return ""
	}
	for _, ep := range cfg.Endpoints {
		if err := handshake(ctx, ep, tlsCfg); err != nil {
			return fmt.Sprintf(" (TLS handshake with %s: %v)", ep, err)
		}
	}
	return ""
}

// handshake connects to ep with tlsCfg and reads once: with TLS 1.3 a
// server refuses the client's certificate only after the client finished
// its handshake, so the alert arrives with the first read. Timeouts and
// unreachable endpoints are not TLS failures and yield nil.
func handshake(ctx context.Context, ep string, tlsCfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	host, _, err := net.SplitHostPort(ep)
	if err != nil {
		return nil
	}
	c := tlsCfg.Clone()
	if c.ServerName == "" {
		c.ServerName = host
	}
	c.NextProtos = []string{"h2"}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", ep)
	if err != nil {
		return nil
	}
	defer raw.Close()
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	conn := tls.Client(raw, c)
	if err := conn.HandshakeContext(ctx); err != nil {
		return tlsFailure(err)
	}
	// The HTTP/2 client preface makes the server answer (or refuse).
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return tlsFailure(err)
	}
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return tlsFailure(err)
	}
	return nil
}

// tlsFailure keeps the errors that say why TLS failed and drops timeouts
// and plain network errors, which the client's own error covers.
func tlsFailure(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
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
