// Package etcdtest runs real etcd servers inside the current process with
// go.etcd.io/etcd/server/v3/embed, for tests and for the dev mode.
//
// A Server is one etcd member on loopback ports with its own data
// directory. It can be stopped and started again on the same directory and
// the same client port: keys and revisions survive, and clients connected to
// it reconnect by themselves. A Cluster is several members that form one
// etcd cluster; each member can be stopped and started on its own.
//
// Outside tests:
//
//	srv, err := etcdtest.Start(ctx, dir)
//	...
//	defer srv.Close()
//	store, err := kvdriver.Open(ctx, srv.URL())
//
// In tests, New and StartCluster start servers in t.TempDir() and stop
// them in t.Cleanup:
//
//	srv := etcdtest.New(t)
//	c := etcdtest.StartCluster(t, 3)
//	c.Members[c.Leader()].Kill() // a crash: no leadership hand-over
//
// Servers log at level "error" to etcd.log in their directory (data lives
// in its data/ subdirectory), so test output stays clean and failures can
// still be read.
package etcdtest
