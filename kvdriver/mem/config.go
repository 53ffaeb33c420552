package mem

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Scheme is the URL scheme mem registers.
const Scheme = "mem"

// DefaultHistory is how many revisions of history a store keeps for
// watches unless told otherwise.
const DefaultHistory = 10000

// DefaultLimits are a store's limits unless told otherwise; they mirror a
// default etcd server (128 operations, 1.5 MiB requests per transaction).
var DefaultLimits = kvdriver.Limits{
	MaxKeyBytes:   kvdriver.DefaultMaxKeyBytes,
	MaxValueBytes: 1 << 20,
	MaxBatchOps:   128,
	MaxBatchBytes: 3 << 19, // 1.5 MiB
}

// Config configures a mem store; zero fields take their defaults.
type Config struct {
	// Name shares one store between every Open of it in the process;
	// empty makes a fresh private store.
	Name string
	// History is how many revisions of change history are kept for
	// watches (default DefaultHistory). Watching from an older revision
	// fails with kvdriver.ErrCompacted.
	History int
	// Limits are the store's size limits; each zero field takes its value
	// from DefaultLimits. MaxKeyBytes cannot exceed
	// kvdriver.DefaultMaxKeyBytes.
	Limits kvdriver.Limits
}

func init() {
	kvdriver.Register(Scheme, kvdriver.ConfigOpener(ParseURL, Open))
}

// ParseURL parses a mem:// URL into a Config.
func ParseURL(u *url.URL) (Config, error) {
	var cfg Config
	if u.Scheme != Scheme {
		return cfg, fmt.Errorf("%w: scheme %q, want %q", kvdriver.ErrInvalidURL, u.Scheme, Scheme)
	}
	// Errors show the URL redacted (user info, secret-looking parameters
	// such as token=) and no value of a parameter mem does not know.
	if u.Opaque != "" {
		return cfg, fmt.Errorf("%w: %q: write mem://NAME", kvdriver.ErrInvalidURL, kvdriver.Redact(u.String()))
	}
	if u.User != nil || u.Port() != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return cfg, fmt.Errorf("%w: %q: a mem URL is mem://[NAME][?PARAMS]", kvdriver.ErrInvalidURL, kvdriver.Redact(u.String()))
	}
	cfg.Name = u.Host
	// In name order, so the first bad parameter named is the same on every
	// parse (a map's order is not).
	q := u.Query()
	for _, name := range slices.Sorted(maps.Keys(q)) {
		vals := q[name]
		var dst *int
		switch name {
		case "history":
			dst = &cfg.History
		case "max-key-bytes":
			dst = &cfg.Limits.MaxKeyBytes
		case "max-value-bytes":
			dst = &cfg.Limits.MaxValueBytes
		case "max-batch-ops":
			dst = &cfg.Limits.MaxBatchOps
		case "max-batch-bytes":
			dst = &cfg.Limits.MaxBatchBytes
		default:
			return cfg, fmt.Errorf("%w: unknown parameter %q (known: history, max-key-bytes, max-value-bytes, max-batch-ops, max-batch-bytes)", kvdriver.ErrInvalidURL, name)
		}
		if len(vals) != 1 {
			return cfg, fmt.Errorf("%w: parameter %q given %d times", kvdriver.ErrInvalidURL, name, len(vals))
		}
		n, err := strconv.Atoi(vals[0])
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("%w: parameter %s=%q is not a positive integer", kvdriver.ErrInvalidURL, name, vals[0])
		}
		*dst = n
	}
	return cfg, nil
}

// withDefaults fills zero fields and checks the rest.
func (c Config) withDefaults() (Config, error) {
	if c.History < 0 {
		return c, fmt.Errorf("%w: mem: History %d is negative", kvdriver.ErrInvalidURL, c.History)
	}
	if c.History == 0 {
		c.History = DefaultHistory
	}
	l, d := &c.Limits, DefaultLimits
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxKeyBytes", &l.MaxKeyBytes, d.MaxKeyBytes},
		{"MaxValueBytes", &l.MaxValueBytes, d.MaxValueBytes},
		{"MaxBatchOps", &l.MaxBatchOps, d.MaxBatchOps},
		{"MaxBatchBytes", &l.MaxBatchBytes, d.MaxBatchBytes},
	} {
		if *f.v < 0 {
			return c, fmt.Errorf("%w: mem: %s %d is negative", kvdriver.ErrInvalidURL, f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if l.MaxKeyBytes > kvdriver.DefaultMaxKeyBytes {
		return c, fmt.Errorf("%w: mem: MaxKeyBytes %d is above the key rules' %d", kvdriver.ErrInvalidURL, l.MaxKeyBytes, kvdriver.DefaultMaxKeyBytes)
	}
	return c, nil
}

// conflicts reports the first setting asked for in want (non-zero) that
// differs from the existing store's settings have.
func (have Config) conflicts(want Config) string {
	switch {
	case want.History != 0 && want.History != have.History:
		return fmt.Sprintf("history %d (it has %d)", want.History, have.History)
	case want.Limits.MaxKeyBytes != 0 && want.Limits.MaxKeyBytes != have.Limits.MaxKeyBytes:
		return fmt.Sprintf("max-key-bytes %d (it has %d)", want.Limits.MaxKeyBytes, have.Limits.MaxKeyBytes)
	case want.Limits.MaxValueBytes != 0 && want.Limits.MaxValueBytes != have.Limits.MaxValueBytes:
		return fmt.Sprintf("max-value-bytes %d (it has %d)", want.Limits.MaxValueBytes, have.Limits.MaxValueBytes)
	case want.Limits.MaxBatchOps != 0 && want.Limits.MaxBatchOps != have.Limits.MaxBatchOps:
		return fmt.Sprintf("max-batch-ops %d (it has %d)", want.Limits.MaxBatchOps, have.Limits.MaxBatchOps)
	case want.Limits.MaxBatchBytes != 0 && want.Limits.MaxBatchBytes != have.Limits.MaxBatchBytes:
		return fmt.Sprintf("max-batch-bytes %d (it has %d)", want.Limits.MaxBatchBytes, have.Limits.MaxBatchBytes)
	}
	return ""
}
