package kvdriver

import (
	"errors"
)

// Sentinel errors shared by every driver. Drivers wrap them with context;
// test with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("kvdriver: key not found")
	// ErrCompacted: the revision a watch asked for is older than the
	// store's retained history. List again and watch from the listed revision.
	ErrCompacted = errors.New("kvdriver: required revision has been compacted")
	// ErrInvalidKey: a key or prefix breaks the key rules (see ValidateKey).
	ErrInvalidKey = errors.New("kvdriver: invalid key")
	// ErrInvalidValue: a value is not a valid JSON document.
	ErrInvalidValue = errors.New("kvdriver: invalid value")
	// ErrInvalidBatch: a batch names one key twice or has an unknown operation.
	ErrInvalidBatch = errors.New("kvdriver: invalid batch")
	// ErrTooLarge: a value, key or batch exceeds the driver's Limits.
	ErrTooLarge = errors.New("kvdriver: exceeds store limit")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("kvdriver: store is closed")
	// ErrUnsupportedScheme: no driver is registered for the URL's scheme.
	ErrUnsupportedScheme = errors.New("kvdriver: unsupported URL scheme")
	// ErrInvalidURL: the store URL cannot be parsed or has a bad parameter.
	ErrInvalidURL = errors.New("kvdriver: invalid store URL")
	// ErrConflict: a Require of the batch did not hold (the key's
	// ModRevision differs); nothing was written.
	ErrConflict = errors.New("kvdriver: required revision does not match")
)

// OpType says what an Op or Event does to its key.
type OpType uint8

const (
	// OpPut creates or replaces a key's value.
	OpPut OpType = iota + 1
	// OpDelete removes a key; deleting an absent key is not an error and
	// produces no event.
	OpDelete
	// OpRequire writes nothing: the batch applies only if the key's
	// ModRevision is the Op's ModRevision (0: the key is absent).
	OpRequire
)

// String returns "put", "delete" or "require".
func (t OpType) String() string {
	switch t {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	case OpRequire:
		return "require"
	}
	return "unknown"
}

// KV is a stored key and its value.
type KV struct {
	Key   string
	Value []byte
	// ModRevision is the revision of the last change to this key.
	ModRevision int64
}

// Op is one operation of an atomic batch (see Store.Apply).
type Op struct {
	Type  OpType
	Key   string
	Value []byte // JSON; nil for OpDelete and OpRequire
	// ModRevision is the revision an OpRequire expects (0: key absent).
	ModRevision int64
}

// Put returns a put operation for Store.Apply.
func Put(key string, value []byte) Op { return Op{Type: OpPut, Key: key, Value: value} }

// Delete returns a delete operation for Store.Apply.
func Delete(key string) Op { return Op{Type: OpDelete, Key: key} }

// Require returns a condition for Store.Apply: the batch applies only if
// key's ModRevision is modRev (0: key is absent). It fences writers: a
// writer that read modRev writes nothing once another writer changed key.
func Require(key string, modRev int64) Op { return Op{Type: OpRequire, Key: key, ModRevision: modRev} }

// Event is one change seen by a watch.
type Event struct {
	Type     OpType
	Key      string
	Value    []byte // nil for OpDelete
	Revision int64
}

// WatchResponse carries the events of one or more whole revisions, in
// revision order. A response with a non-nil Err is the last one on its
// channel.
type WatchResponse struct {
	Events []Event
	// Revision is the store revision this response brings the watcher up
	// to (at least the revision of its last event).
	Revision int64
	Err      error
}

// Limits are a driver's size limits. A batch must satisfy all of them;
// zero means "no limit".
type Limits struct {
	// MaxKeyBytes is the longest key accepted.
	MaxKeyBytes int
	// MaxValueBytes is the largest value accepted in a single Put.
	MaxValueBytes int
	// MaxBatchOps is the most operations one Apply may carry.
	MaxBatchOps int
	// MaxBatchBytes is the most key plus value bytes one Apply may carry.
	MaxBatchBytes int
}
