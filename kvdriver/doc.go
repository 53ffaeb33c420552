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
// Drivers register a URL scheme (database/sql style) and are opened by URL:
//
//	import (
//		"github.com/bagger/lenkwerk/kvdriver"
//		_ "github.com/bagger/lenkwerk/kvdriver/etcd"
//	)
//
//	store, err := kvdriver.Open(ctx, "etcd://127.0.0.1:2379")
//
// Prefixes are path prefixes: "/Index" matches "/Index" and "/Index/7" but
// not "/IndexField"; "/" matches every key.
package kvdriver
