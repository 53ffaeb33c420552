// Package kvdriver is Lenkwerk's key-value store API: the agent writes the
// cluster state through it and Bagger's consumers (storage-node agents, tools)
// read and watch through it.
//
// A Store holds JSON documents under '/'-delimited keys ("/Index/3",
// "/PostgresInstance/db1/5432"). Every change is stamped with a store
// revision, a number that grows with every committed write; Put, Delete and
// Apply each create at most one revision, and all events of one Apply share
// it. Watch delivers, in commit order, every event after a given revision
// exactly once, and never splits a revision across two responses. When the
// history a watch needs has been compacted it ends with ErrCompacted: list
// again and watch from the listed revision.
//
// Store is the same for every driver: it checks keys, values and batches,
// tracks Close, names the driver and the operation in every error and
// classifies errors (Code, Retryable: the one place that decides whether
// an error is worth retrying). Under it, a driver implements the small
// Driver interface (optionally Putter) and nothing else; Store.As reaches
// a driver's own features.
//
// Drivers register a URL scheme (database/sql style) and are opened by URL:
//
//	import (
//		"github.com/bagger/lenkwerk/kvdriver"
//		_ "github.com/bagger/lenkwerk/kvdriver/etcd"
//	)
//
//	store, err := kvdriver.Open(ctx, "etcd://127.0.0.1:2379")
//
// # Keys and values
//
// A key is a '/'-delimited path (ValidateKey): it starts with '/', has no
// empty segment (no "//", no trailing '/'), is valid UTF-8 without NUL and
// is at most DefaultMaxKeyBytes long. A segment may not be "." or "..":
// such a key would name another key, or escape its prefix, for any
// consumer that treats keys as paths (path.Clean, HTTP routers, a dump to
// files), so producers escape such values (keymap does) rather than
// store them. Dots inside a segment ("db1.example.com", "...") are fine.
// The root "/" is a prefix, not a key.
//
// Prefixes are path prefixes: "/Index" matches "/Index" and "/Index/7" but
// not "/IndexField"; "/" matches every key. One trailing '/' on a prefix
// changes nothing ("/Index/" is "/Index", as etcdctl users type it;
// CleanPrefix): List and Watch of every driver accept it.
//
// A value is one JSON document in UTF-8 (ValidateValue); the empty value is
// not one: delete the key instead. Drivers may normalise a document (jsonb
// does) but never change what it means.
//
// Every bad key, value or batch is refused before anything is written, with
// an error wrapping ErrInvalidKey, ErrInvalidValue, ErrInvalidBatch or
// ErrTooLarge that names the problem. Store checks with ValidatePut and
// ValidateBatch against the driver's Limits before the driver sees a call.
//
// The conformance suite in package kvtest holds every driver to this
// contract; package mem is the in-process driver for tests.
package kvdriver
