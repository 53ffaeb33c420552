package kvdriver

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Opener opens a Store from a parsed URL. Drivers implement it and register
// it for their scheme; it returns the Store of the driver (NewStore).
type Opener interface {
	OpenStore(ctx context.Context, u *url.URL) (*Store, error)
}

// OpenerFunc adapts a function to Opener.
type OpenerFunc func(ctx context.Context, u *url.URL) (*Store, error)

// OpenStore calls f.
func (f OpenerFunc) OpenStore(ctx context.Context, u *url.URL) (*Store, error) { return f(ctx, u) }

// ConfigOpener is the Opener of a driver whose URL parse turns into a
// configuration of type C, which open opens; parse's error is returned as
// it is.
//
//	kvdriver.Register(Scheme, kvdriver.ConfigOpener(ParseURL, Open))
func ConfigOpener[C any](parse func(*url.URL) (C, error), open func(context.Context, C) (*Store, error)) Opener {
	return OpenerFunc(func(ctx context.Context, u *url.URL) (*Store, error) {
		cfg, err := parse(u)
		if err != nil {
			return nil, err
		}
		return open(ctx, cfg)
	})
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes a driver available under a URL scheme. It panics if the
// scheme is registered twice or o is nil, like database/sql.Register.
func Register(scheme string, o Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if o == nil {
		panic("kvdriver: Register opener is nil")
	}
	if _, dup := registry[scheme]; dup {
		panic("kvdriver: Register called twice for scheme " + scheme)
	}
	registry[scheme] = o
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens the store named by rawURL with the driver registered for its
// scheme. It is the way to open a store; a driver's own Open takes the
// configuration its URL parses into. Errors never contain the URL's
// password; Retryable tells an unreachable store (worth retrying) from a
// bad URL.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the raw URL, password included: don't wrap it.
		return nil, fmt.Errorf("%w: cannot parse %q", ErrInvalidURL, Redact(rawURL))
	}
	registryMu.RLock()
	o, ok := registry[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q (registered: %v)", ErrUnsupportedScheme, u.Scheme, Schemes())
	}
	s, err := o.OpenStore(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("open %s store: %w", u.Scheme, err)
	}
	return s, nil
}

// Redact returns rawURL with any password replaced by "xxxxx", for logs and
// errors: the userinfo password, query parameters whose name says password,
// secret or token (password-file is masked too: a path is nobody's
// business in a log), libpq key=value strings' password, and a query or
// fragment that cannot be parsed. Unparseable input is replaced whole.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable URL>"
	}
	if u.Scheme == "" && conninfoSecret.MatchString(rawURL) {
		// "host=db password=x": a libpq connection string, not a URL.
		return conninfoSecret.ReplaceAllString(rawURL, "${1}xxxxx")
	}
	masked := false
	if u.Opaque != "" && strings.Contains(u.Opaque, "@") {
		// "user:pass@host" parses as scheme "user", opaque "pass@host".
		u.Opaque = "xxxxx@" + u.Opaque[strings.LastIndexByte(u.Opaque, '@')+1:]
		masked = true
	}
	if _, ok := u.User.Password(); ok {
		masked = true
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			// Query() would drop the bad pair and Redacted keep it raw.
			u.RawQuery = "xxxxx"
			masked = true
		} else {
			secret := false
			for k := range q {
				if secretParam(k) {
					q[k] = []string{"xxxxx"}
					secret = true
				}
			}
			if secret {
				u.RawQuery = q.Encode()
				masked = true
			}
		}
	}
	if u.Fragment != "" {
		u.Fragment, u.RawFragment = "xxxxx", ""
		masked = true
	}
	if !masked {
		return rawURL
	}
	return u.Redacted()
}

// secretParam reports a URL parameter that may carry a secret.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"password", "passwd", "pwd", "secret", "token", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// conninfoSecret matches the value of a secret in a libpq key=value
// connection string (quoted or not).
var conninfoSecret = regexp.MustCompile(`(?i)(\b\w*(?:password|passwd|pwd|secret|token)\w*\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)
