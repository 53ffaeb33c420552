package etcd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Scheme is the URL scheme this driver registers.
const Scheme = "etcd"

// PasswordEnv names the environment variable that holds the etcd password
// when the URL gives a username but neither a password nor password-file.
const PasswordEnv = "LENKWERK_ETCD_PASSWORD"

// Defaults for Config fields left zero.
const (
	DefaultPort           = "2379"
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config is what an etcd:// URL parses into; library users may fill it
// directly and call Open.
type Config struct {
	// Endpoints are the members' client addresses, "host:port".
	Endpoints []string
	// Username and Password authenticate with etcd's auth; empty Username
	// means no auth. PasswordFile, when set, is read at Open instead of
	// Password.
	Username     string
	Password     string
	PasswordFile string
	// TLS turns on TLS. It is implied by CAFile, CertFile and KeyFile.
	// Without CAFile the system's roots verify the servers.
	TLS bool
	// CAFile is a PEM bundle of the CAs that sign the servers' certificates.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and key, for
	// servers with --client-cert-auth. Both or neither.
	CertFile, KeyFile string
	// DialTimeout bounds connecting; default DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each unary request (not watches); default
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// PrivateClient gives the Store a client of its own instead of the one
	// shared by the process's Stores on the same cluster, as a separate
	// process would have (benchmarks of many consumers).
	PrivateClient bool
}

// String describes the config without its password.
func (c Config) String() string {
	u := url.URL{Scheme: Scheme, Host: strings.Join(c.Endpoints, ",")}
	if c.Username != "" {
		u.User = url.User(c.Username)
	}
	return u.String()
}

// ParseURL parses an etcd:// URL into a Config (see the package
// documentation for its parameters). Errors wrap kvdriver.ErrInvalidURL
// and never contain the password.
func ParseURL(rawURL string) (Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, password included.
		return Config{}, fmt.Errorf("%w: cannot parse %q", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL))
	}
	return ConfigFromURL(u)
}

// urlParams are the query parameters ConfigFromURL understands.
var urlParams = []string{"username", "password-file", "ca-file", "cert-file", "key-file", "tls", "dial-timeout", "request-timeout"}

// ConfigFromURL is ParseURL for a parsed URL.
func ConfigFromURL(u *url.URL) (Config, error) {
	var c Config
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", kvdriver.ErrInvalidURL, kvdriver.Redact(u.String()), fmt.Sprintf(format, args...))
	}
	if u.Scheme != Scheme {
		return c, bad("scheme is %q, want %q", u.Scheme, Scheme)
	}
	if u.Opaque != "" {
		return c, bad("want etcd://host:port")
	}
	if u.Path != "" && u.Path != "/" {
		return c, bad("unexpected path %q (keys are not namespaced by the URL)", u.Path)
	}
	if u.Host == "" {
		return c, bad("no endpoint (want etcd://host:port[,host:port...])")
	}
	for _, hp := range strings.Split(u.Host, ",") {
		ep, err := endpoint(hp)
		if err != nil {
			return c, bad("%v", err)
		}
		c.Endpoints = append(c.Endpoints, ep)
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return c, bad("cannot parse query")
	}
	var unknown []string
	for k, v := range q {
		if !slices.Contains(urlParams, k) {
			unknown = append(unknown, k)
			continue
		}
		if len(v) > 1 {
			return c, bad("parameter %q given %d times", k, len(v))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return c, bad("unknown parameter(s) %s (known: %s)", strings.Join(unknown, ", "), strings.Join(urlParams, ", "))
	}

	if u.User != nil {
		c.Username = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	if name := q.Get("username"); name != "" {
		if c.Username != "" && c.Username != name {
			return c, bad("username given twice (%q in the user info, %q in username=)", c.Username, name)
		}
		c.Username = name
	}
	c.PasswordFile = q.Get("password-file")
	if c.PasswordFile != "" && c.Password != "" {
		return c, bad("password given twice (in the URL and in password-file=)")
	}
	if c.Username == "" && (c.Password != "" || c.PasswordFile != "") {
		return c, bad("password without username")
	}
	if c.Username != "" && c.Password == "" && c.PasswordFile == "" {
		c.Password = os.Getenv(PasswordEnv)
	}

	c.CAFile, c.CertFile, c.KeyFile = q.Get("ca-file"), q.Get("cert-file"), q.Get("key-file")
	if v := q.Get("tls"); v != "" {
		if c.TLS, err = strconv.ParseBool(v); err != nil {
			return c, bad("tls=%q is not a boolean", v)
		}
		if !c.TLS && (c.CAFile != "" || c.CertFile != "" || c.KeyFile != "") {
			return c, bad("tls=false with TLS file parameters")
		}
	}
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{"dial-timeout", &c.DialTimeout}, {"request-timeout", &c.RequestTimeout}} {
		v := q.Get(d.name)
		if v == "" {
			continue
		}
		if *d.dst, err = time.ParseDuration(v); err != nil || *d.dst <= 0 {
			return c, bad("%s=%q is not a positive duration (e.g. 5s)", d.name, v)
		}
	}
	return c, c.validate()
}

// endpoint checks one host[:port] of the URL and adds the default port.
func endpoint(hp string) (string, error) {
	if hp == "" {
		return "", errors.New("empty endpoint in the host list")
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		// No port (or a bare IPv6 address): use the default port.
		host, port = strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]"), DefaultPort
	}
	if host == "" || strings.ContainsAny(host, "/@?#") {
		return "", fmt.Errorf("bad endpoint %q", hp)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("bad port in endpoint %q", hp)
	}
	return net.JoinHostPort(host, port), nil
}

// validate checks a Config for Open. Errors wrap kvdriver.ErrInvalidURL
// since a Config is the parsed form of a URL.
func (c Config) validate() error {
	switch {
	case len(c.Endpoints) == 0:
		return fmt.Errorf("%w: no etcd endpoints", kvdriver.ErrInvalidURL)
	case (c.CertFile == "") != (c.KeyFile == ""):
		return fmt.Errorf("%w: cert-file and key-file go together", kvdriver.ErrInvalidURL)
	case c.DialTimeout < 0 || c.RequestTimeout < 0:
		return fmt.Errorf("%w: negative timeout", kvdriver.ErrInvalidURL)
	}
	return nil
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
		c.TLS = true
	}
	return c
}
