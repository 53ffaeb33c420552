package kvdriver

import (
	"context"
)

// Driver is what a store driver implements: the store's own operations,
// nothing a Store does for every driver. Drivers are used only through
// Store (NewStore), which holds the contract's common part once:
//
//   - arguments are checked before a Driver sees them: keys satisfy
//     ValidateKey, prefixes are in CleanPrefix's form, values are valid
//     JSON, batches pass ValidateBatch against the driver's Limits,
//     revisions given to Watch are not negative;
//   - no call is made after Close has begun, except that calls already
//     running may still be;
//   - errors are wrapped with the driver's name and the operation, and
//     classified (Code) with the help of ErrorCode; a driver returns its
//     errors unprefixed, wrapping the package's sentinels where they apply.
//
// A Driver is safe for concurrent use.
type Driver interface {
	// Get returns the key's value, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)

	// List returns every key at or below prefix, sorted by key, and the
	// revision the listing reflects (at least 1), from one snapshot.
	List(ctx context.Context, prefix string) (kvs []KV, rev int64, err error)

	// Apply applies a validated batch atomically as one revision, checking
	// its Requires with the writes (ErrConflict), and returns the store
	// revision after it. Deletes of absent keys make no event; a batch
	// that changes nothing makes no revision.
	Apply(ctx context.Context, ops []Op) (rev int64, err error)

	// Watch reports every change at or below prefix after afterRev, as
	// Store.Watch promises; afterRev 0 is resolved to the current revision
	// before Watch returns. The channel must be closed once ctx is done and
	// after Close, and a response with Err must be the last one. A send
	// must never block once ctx is done.
	Watch(ctx context.Context, prefix string, afterRev int64) <-chan WatchResponse

	// Compact discards history at and before rev.
	Compact(ctx context.Context, rev int64) error

	// Limits reports the driver's size limits. They do not change while
	// the driver is open.
	Limits() Limits

	// ErrorCode classifies an error of this driver that wraps none of the
	// package's sentinels (a server's or a client library's error): what a
	// caller can do about it. Unknown says "not classified".
	ErrorCode(err error) ErrorCode

	// Close releases the driver's resources and ends its watches (their
	// channels are closed when it returns). Store calls it once.
	Close() error
}

// Putter is implemented by drivers that write a single key faster than a
// one-operation Apply (etcd's Put needs no transaction). Store uses it for
// Put and Delete when the driver has it.
type Putter interface {
	// Put sets key to a validated value and returns the new revision.
	Put(ctx context.Context, key string, value []byte) (rev int64, err error)
	// Delete removes key and returns the revision after it (no new
	// revision when the key was absent).
	Delete(ctx context.Context, key string) (rev int64, err error)
}
