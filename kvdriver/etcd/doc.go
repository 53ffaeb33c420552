// Package etcd is the kvdriver driver for etcd v3 (go.etcd.io/etcd/client/v3).
// Importing it registers the URL scheme "etcd":
//
//	import _ "github.com/bagger/lenkwerk/kvdriver/etcd"
//
//	store, err := kvdriver.Open(ctx, "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379?request-timeout=5s")
//
// The URL names one or more members as host:port (port 2379 when left out;
// with several members every one but the last must have a port, a limit
// of Go's URL parser). Query parameters, all optional:
//
//	username=NAME         etcd user (or the URL's user info, etcd://NAME@host:port)
//	password-file=PATH    file holding the password (one line; trailing newline ignored)
//	ca-file=PATH          PEM CA bundle to verify the servers; enables TLS
//	cert-file=PATH        PEM client certificate for TLS client auth (with key-file)
//	key-file=PATH         PEM key of the client certificate
//	tls=true              TLS with the system's CA roots (implied by the *-file parameters)
//	dial-timeout=5s       bound on connecting (and the connection check in Open)
//	request-timeout=10s   bound on each Get, Put, Delete, List, Apply, Compact
//
// Without password-file the password is the URL's (etcd://NAME:PASSWORD@…,
// accepted but discouraged, since URLs end up in process lists and shell
// history) or else $LENKWERK_ETCD_PASSWORD. Passwords never appear in errors.
// Unknown parameters are an error that names them. Skipping TLS
// verification is deliberately not offered.
//
// With etcd auth, grant a role the store prefix without a trailing slash
// (etcdctl role grant-permission R readwrite /Index --prefix): the driver
// reads the key "/Index" itself as well as "/Index/…", and watches the
// range from "/Index" to "/Index0". A watch refused for permissions ends
// with the error rather than retrying.
//
// # Semantics
//
// Keys are stored as they are; a prefix "/Index" is read as the key
// "/Index" plus the range "/Index/…", so "/IndexField" stays out. An Apply
// is one etcd transaction and so one revision; its limits (Limits) are
// etcd's default server limits, 128 operations and 1.5 MiB per request,
// less room for the request's own encoding, so that any batch within them
// is accepted by a server with default settings.
//
// A watch is an etcd watch with WithRequireLeader and progress
// notifications. It never splits a revision. When its stream ends for any
// reason but compaction or the caller's context (member restart, lost
// connection, lost leader) it is re-established from the revision after
// the last one delivered, with capped backoff, so nothing is missed or
// repeated; when that revision has been compacted the watch ends with an
// error wrapping kvdriver.ErrCompacted.
//
// Stores of one process opened with the same endpoints and credentials
// share one clientv3 client, closed with the last of them: one gRPC
// connection and one watch stream carry all their watches, so a process
// with hundreds of watchers costs etcd one connection. A member that loses
// its leader (partitioned from the quorum) cancels the watches on it
// (WithRequireLeader) and they are re-established, on another member when
// the URL names several.
package etcd
