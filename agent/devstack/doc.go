// Package devstack runs the servers of a local Lenkwerk stack from what the
// machine has: PostgreSQL from its server binaries (Cluster, Start) and
// etcd embedded in the process (EtcdServer, EtcdCluster). StartStack brings
// up the whole stack (PostgreSQL, the Lenkwerk database created and
// provisioned, etcd) for lenkwerk dev, the integration harness's local
// backend and the benchmarks; integration/pgtest and integration/etcdtest
// wrap the servers for tests (a shared cluster per test binary, servers
// stopped in t.Cleanup).
//
// PostgreSQL binaries are found through $LENKWERK_PG_BINDIR, `pg_config
// --bindir`, /usr/lib/postgresql/*/bin or $PATH. When the process runs as
// root the server runs as the "postgres" user, since PostgreSQL refuses
// root. Options.TLS turns ssl on with the caller's certificates and
// Options.HBA puts pg_hba.conf rules first; the package itself connects
// through the Unix socket, which stays open to the superuser.
//
// A temporary cluster records the process that started it; Start stops and
// removes temporary clusters whose process is gone (a process killed before
// its cleanup leaves its server running), and StopStale stops the server of
// a directory whose owner is gone.
//
// For failover and restore tests: StartStandby (pg_basebackup -R), Kill (a
// crash), TakeOver (a stopped standby promoted at the dead primary's port),
// Promote, CopySlot/SaveSlot/InstallSlot (a logical slot's state copied into
// another cluster, as Patroni's permanent slots do), and ArchiveSettings,
// BaseBackup and RestoreBackup (point-in-time restore with
// recovery_target_lsn).
//
// An EtcdServer is one etcd member on loopback ports with its own data
// directory. It can be stopped and started again on the same directory and
// the same client port: keys and revisions survive, and clients connected
// to it reconnect by themselves. An EtcdCluster is several members that
// form one etcd cluster; each member can be stopped and started on its own.
// Servers log at level "error" to etcd.log in their directory.
//
//	st, err := devstack.StartStack(ctx, devstack.StackOptions{
//		Database:    "lenkwerk",
//		Provision:   func(ctx context.Context, pg *devstack.Cluster) error { return migrate(ctx, pg.URL("lenkwerk", "")) },
//		EtcdMembers: 1,
//		Etcd:        devstack.EtcdOptions{Dir: etcdDir},
//	})
//	...
//	defer st.Close()
//	agentDB, kv := st.DatabaseURL("lenkwerk_agent"), st.EtcdURL()
package devstack

// TB is the part of testing.TB the helpers that tie a server's life to a
// test use (NewDatabase, StartStandby, BaseBackup, SaveSlot,
// MakeArchiveDir, Tie), so this package does not import testing: the lenkwerk
// binary links it.
type TB interface {
	Helper()
	Name() string
	Cleanup(func())
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
}
