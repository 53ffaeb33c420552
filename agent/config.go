package agent

import (
	"log/slog"
	"regexp"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Defaults of Config.
const (
	DefaultSlot           = "lw_agent"
	DefaultPublication    = "bagger_lw_storage"
	DefaultStatusInterval = 10 * time.Second
	DefaultPollInterval   = 10 * time.Second
	DefaultApplyTimeout   = 10 * time.Second
	DefaultStoreRetry     = 5 * time.Second
	DefaultMinBackoff     = 250 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	// DefaultStandbyRetry is the longest wait between a standby's
	// attempts when the slot is still held after it got the agent lock.
	DefaultStandbyRetry = time.Second
	// DefaultMaxBatchOps and DefaultMaxBatchBytes cap a store batch when
	// the store's own Limits are larger or unlimited, so a huge
	// transaction is applied in chunks with bounded memory: up to three
	// batches are held (decoded, pending, in flight). A batch is one round
	// trip to the store whatever its size, so beyond a few thousand
	// operations a larger cap costs memory and gains little (see
	// integration/bench/BENCHMARKS.md).
	DefaultMaxBatchOps   = 2000
	DefaultMaxBatchBytes = 16 << 20
)

// Config configures an Agent.
type Config struct {
	// DatabaseURL is the Lenkwerk database (postgres://…). The agent opens
	// a replication connection and regular connections with it; the role
	// needs REPLICATION and SELECT on the published tables.
	DatabaseURL string
	// Store receives the rows. The caller opens and closes it.
	Store *kvdriver.Store
	// Slot is the logical replication slot (pgoutput); default lw_agent.
	Slot string
	// Publication is the publication streamed; default bagger_lw_storage.
	Publication string
	// Prefix is put before every key ("" or "/a/b").
	Prefix string
	// Templates override or extend keymap.DefaultTemplates
	// ("schema.table" → "/Key/{col}").
	Templates map[string]string
	// Logger receives the agent's logs; default slog.Default().
	Logger *slog.Logger
	// Name names the store in logs and metrics (label store); default
	// "default". Agents fanning out to several stores each have their own
	// name, slot and checkpoint (see StoreSlot).
	Name string
	// Metrics receives the agent's Prometheus metrics; nil: none.
	Metrics *Metrics

	// StatusInterval is the longest time between standby status updates
	// (keep it well below the server's wal_sender_timeout) and between
	// checkpoint writes for idle keepalive positions.
	StatusInterval time.Duration
	// PollInterval is how often the publication's table list is read to
	// mirror tables added to it.
	PollInterval time.Duration
	// ApplyTimeout bounds one store write attempt.
	ApplyTimeout time.Duration
	// StoreRetry is how long a failing store write is retried in place,
	// with the replication connection kept alive, before the session ends
	// and the agent reconnects from the checkpoint: a walsender that must
	// stop (PostgreSQL shutting down, perhaps the store's own server) waits
	// for its consumer to confirm or go.
	StoreRetry time.Duration
	// MinBackoff and MaxBackoff bound the wait before reconnecting.
	MinBackoff, MaxBackoff time.Duration
	// StandbyRetry bounds the wait of an agent that found the slot active
	// after it got the agent lock (the previous agent's walsender not yet
	// gone); default 1s. A standby waiting for the lock itself is woken by
	// PostgreSQL at once; it asks again every 5 StandbyRetry
	// (lock_timeout), so a dead connection of its own shows.
	StandbyRetry time.Duration
	// RetainedWALWarn: above this many bytes of WAL held back by the slot
	// the agent logs a warning at every poll (a stalled agent fills the
	// server's disk; see max_slot_wal_keep_size). Default 1 GiB.
	RetainedWALWarn int64
	// MaxBatchOps and MaxBatchBytes cap one store batch below the store's
	// Limits (0: DefaultMaxBatchOps, DefaultMaxBatchBytes).
	MaxBatchOps, MaxBatchBytes int
	// SyncStandbys are standbys (application_name in pg_stat_replication)
	// that must have flushed a transaction's commit before the agent
	// applies it to the store: then a failover to one of them never takes
	// back a value storage nodes saw. Empty: changes go to the store as
	// soon as the primary commits them.
	SyncStandbys []string
}

// Names as migrations allows them; the publication name is spliced into
// START_REPLICATION.
var (
	slotName        = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	publicationName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

func (c *Config) setDefaults() {
	if c.Slot == "" {
		c.Slot = DefaultSlot
	}
	if c.Publication == "" {
		c.Publication = DefaultPublication
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Name == "" {
		c.Name = "default"
	}
	setPositive(&c.StandbyRetry, DefaultStandbyRetry)
	setPositive(&c.StatusInterval, DefaultStatusInterval)
	setPositive(&c.PollInterval, DefaultPollInterval)
	setPositive(&c.ApplyTimeout, DefaultApplyTimeout)
	setPositive(&c.StoreRetry, DefaultStoreRetry)
	setPositive(&c.MinBackoff, DefaultMinBackoff)
	setPositive(&c.MaxBackoff, DefaultMaxBackoff)
	setPositive(&c.RetainedWALWarn, 1<<30)
	setPositive(&c.MaxBatchOps, DefaultMaxBatchOps)
	setPositive(&c.MaxBatchBytes, DefaultMaxBatchBytes)
}

// setPositive sets *v to def unless it is positive (zero or a negative
// value of a Config field means "the default").
func setPositive[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
