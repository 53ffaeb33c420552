package pgkv

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Defaults of Config (and of the URL parameters that set them).
const (
	DefaultSchema           = "lenkwerk_kv"
	DefaultPollInterval     = 5 * time.Second
	DefaultProbeTimeout     = 5 * time.Second
	DefaultHistoryRevisions = 100_000
	DefaultHistoryAge       = 24 * time.Hour
	DefaultCompactInterval  = time.Minute
	DefaultMaxValueBytes    = 1 << 20
	DefaultMaxBatchOps      = 10_000
	DefaultMaxBatchBytes    = 64 << 20
)

const (
	maxSchemaLen             = 48 // leaves room for the "_changes" channel suffix within NAMEDATALEN
	readerRole               = "lenkwerk_kv_reader"
	listenerApplicationName  = "lenkwerk-pgkv-listen"
	defaultApplicationName   = "lenkwerk-pgkv"
	migrationsTable          = "pgkv_schema_migrations"
	channelSuffix            = "_changes"
	reservedParamPrefixDash  = "lenkwerk-"
	reservedParamPrefixUnder = "lenkwerk_"
	maxReconnectBackoff      = 5 * time.Second
	initialReconnectBackoff  = 50 * time.Millisecond
	watchEventsPerResponse   = 10_000
	watchReadTimeout         = time.Minute
	maxApplyAttempts         = 100
)

// Config is what a postgres:// store URL parses into. Library users start
// from DefaultConfig, adjust it and call Open.
type Config struct {
	// ConnString is the pgx connection string (URL or key=value), without
	// the driver's own parameters.
	ConnString string
	// Schema holds the driver's tables; it is created if missing.
	Schema string
	// Migrate applies the embedded migrations on Open.
	Migrate bool
	// Listen makes watches wait on LISTEN/NOTIFY; without it they only
	// poll (for transaction-pooling proxies).
	Listen bool
	// PollInterval is how often every watch reads the change log even
	// without a notification: the safety net for lost notifications.
	PollInterval time.Duration
	// ProbeTimeout bounds the wait for the listener's own probe
	// notification; when it does not arrive, notifications are reported
	// unavailable (see NotifyErr) and watches rely on polling.
	ProbeTimeout time.Duration
	// HistoryRevisions keeps at least the newest HistoryRevisions revisions
	// of the change log; older ones are compacted. 0: no count bound.
	HistoryRevisions int64
	// HistoryAge compacts revisions older than this. 0: no age bound.
	HistoryAge time.Duration
	// CompactInterval is how often the automatic compaction runs; 0 turns
	// it off (Compact still works).
	CompactInterval time.Duration
	// Limits are the size limits enforced on every write.
	Limits kvdriver.Limits
}

// DefaultConfig returns the configuration a URL without driver parameters
// gets.
func DefaultConfig(connString string) Config {
	return Config{
		ConnString:       connString,
		Schema:           DefaultSchema,
		Migrate:          true,
		Listen:           true,
		PollInterval:     DefaultPollInterval,
		ProbeTimeout:     DefaultProbeTimeout,
		HistoryRevisions: DefaultHistoryRevisions,
		HistoryAge:       DefaultHistoryAge,
		CompactInterval:  DefaultCompactInterval,
		Limits: kvdriver.Limits{
			MaxKeyBytes:   kvdriver.DefaultMaxKeyBytes,
			MaxValueBytes: DefaultMaxValueBytes,
			MaxBatchOps:   DefaultMaxBatchOps,
			MaxBatchBytes: DefaultMaxBatchBytes,
		},
	}
}

// driverParams are the URL parameters pgkv consumes; everything else goes to
// pgx (libpq parameters, pool_* settings, server runtime parameters).
var driverParams = map[string]func(c *Config, v string) error{
	"schema": func(c *Config, v string) error { c.Schema = v; return nil },
	"migrate": func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		c.Migrate = b
		return err
	},
	"listen": func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		c.Listen = b
		return err
	},
	"poll-interval":    durationParam(func(c *Config) *time.Duration { return &c.PollInterval }),
	"probe-timeout":    durationParam(func(c *Config) *time.Duration { return &c.ProbeTimeout }),
	"history-age":      durationParam(func(c *Config) *time.Duration { return &c.HistoryAge }),
	"compact-interval": durationParam(func(c *Config) *time.Duration { return &c.CompactInterval }),
	"history-revisions": func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil && n < 0 {
			err = fmt.Errorf("negative")
		}
		c.HistoryRevisions = n
		return err
	},
	"max-value-bytes": intParam(func(c *Config) *int { return &c.Limits.MaxValueBytes }),
	"max-batch-ops":   intParam(func(c *Config) *int { return &c.Limits.MaxBatchOps }),
	"max-batch-bytes": intParam(func(c *Config) *int { return &c.Limits.MaxBatchBytes }),
}

func durationParam(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err == nil && d < 0 {
			err = fmt.Errorf("negative")
		}
		*field(c) = d
		return err
	}
}

func intParam(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err == nil && n < 0 {
			err = fmt.Errorf("negative")
		}
		*field(c) = n
		return err
	}
}

// ParseURL parses a postgres:// or postgresql:// store URL. The driver's
// parameters (schema, migrate, listen, poll-interval, probe-timeout,
// history-revisions, history-age, compact-interval, max-value-bytes,
// max-batch-ops, max-batch-bytes) are taken out; the rest of the URL is
// the pgx connection string. Parameters starting with "lenkwerk-" or
// "lenkwerk_" that pgkv does not know are rejected. Errors wrap
// kvdriver.ErrInvalidURL and never contain the password.
func ParseURL(rawURL string) (Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return Config{}, fmt.Errorf("%w: cannot parse %q", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL))
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return Config{}, fmt.Errorf("%w: scheme %q is not postgres or postgresql", kvdriver.ErrInvalidURL, u.Scheme)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %s: bad query string", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL))
	}
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	sort.Strings(names)
	c := DefaultConfig("")
	for _, k := range names {
		set, ok := driverParams[k]
		if !ok {
			lk := strings.ToLower(k)
			if strings.HasPrefix(lk, reservedParamPrefixDash) || strings.HasPrefix(lk, reservedParamPrefixUnder) {
				return Config{}, fmt.Errorf("%w: %s: unknown parameter %q (pgkv knows %s)", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL), k, knownParams())
			}
			continue
		}
		vs := q[k]
		if len(vs) != 1 {
			return Config{}, fmt.Errorf("%w: %s: parameter %q given %d times", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL), k, len(vs))
		}
		if err := set(&c, vs[0]); err != nil {
			return Config{}, fmt.Errorf("%w: %s: parameter %s=%q: %v", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL), k, vs[0], err)
		}
	}
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %v", kvdriver.ErrInvalidURL, kvdriver.Redact(rawURL), err)
	}
	u.RawQuery = withoutDriverParams(u.RawQuery)
	c.ConnString = u.String()
	return c, nil
}

// withoutDriverParams drops the driver's parameters from a raw query and
// keeps the others exactly as written: re-encoding would turn "%20" into
// "+", which pgx does not read as a space.
func withoutDriverParams(rawQuery string) string {
	var kept []string
	for _, part := range strings.Split(rawQuery, "&") {
		if part == "" {
			continue
		}
		name, _, _ := strings.Cut(part, "=")
		if k, err := url.QueryUnescape(name); err == nil {
			if _, ours := driverParams[k]; ours {
				continue
			}
		}
		kept = append(kept, part)
	}
	return strings.Join(kept, "&")
}

func knownParams() string {
	names := make([]string, 0, len(driverParams))
	for k := range driverParams {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

var identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidateSchema reports whether name is usable as the driver's schema: an
// identifier of letters, digits and underscores, not starting with a
// digit, at most 48 bytes, and not a pg_ system schema.
func ValidateSchema(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("schema: empty name")
	case len(name) > maxSchemaLen:
		return fmt.Errorf("schema %q: longer than %d bytes", name, maxSchemaLen)
	case !identifierRE.MatchString(name):
		return fmt.Errorf("schema %q: not an identifier (letters, digits, '_', not starting with a digit)", name)
	case strings.HasPrefix(strings.ToLower(name), "pg_") || strings.EqualFold(name, "information_schema"):
		return fmt.Errorf("schema %q: reserved for the system", name)
	}
	return nil
}

func (c *Config) validate() error {
	if err := ValidateSchema(c.Schema); err != nil {
		return err
	}
	if c.Listen && c.ProbeTimeout <= 0 {
		return fmt.Errorf("probe-timeout must be positive")
	}
	if c.PollInterval <= 0 {
		return fmt.Errorf("poll-interval must be positive")
	}
	if c.Limits.MaxKeyBytes <= 0 || c.Limits.MaxKeyBytes > kvdriver.DefaultMaxKeyBytes {
		c.Limits.MaxKeyBytes = kvdriver.DefaultMaxKeyBytes
	}
	return nil
}

// channel is the NOTIFY channel of the schema's store.
func (c *Config) channel() string { return c.Schema + channelSuffix }
