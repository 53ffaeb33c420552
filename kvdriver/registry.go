package kvdriver

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Opener opens a Store from a parsed URL. Drivers implement it and register
// it for their scheme.
type Opener interface {
	OpenStore(ctx context.Context, u *url.URL) (Store, error)
}

// OpenerFunc adapts a function to Opener.
type OpenerFunc func(ctx context.Context, u *url.URL) (Store, error)

// OpenStore calls f.
func (f OpenerFunc) OpenStore(ctx context.Context, u *url.URL) (Store, error) { return f(ctx, u) }

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
// scheme. Errors never contain the URL's password.
func Open(ctx context.Context, rawURL string) (Store, error) {
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
// errors. Unparseable input is replaced whole.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable URL>"
	}
	q := u.Query()
	masked := false
	for k := range q {
		if lk := strings.ToLower(k); strings.Contains(lk, "password") || strings.Contains(lk, "secret") || strings.Contains(lk, "token") {
			q.Set(k, "xxxxx")
			masked = true
		}
	}
	if masked {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
