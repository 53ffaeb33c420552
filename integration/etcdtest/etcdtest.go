// Package etcdtest runs real etcd servers inside the test process (the
// servers of agent/devstack), stopped when the test ends:
//
//	srv := etcdtest.New(t)
//	c := etcdtest.StartCluster(t, 3)
//	c.Members[c.Leader()].Kill() // a crash: no leadership hand-over
//
// Servers log at level "error" to etcd.log in their directory (data lives
// in its data/ subdirectory), so test output stays clean and failures can
// still be read.
package etcdtest

import "github.com/bagger/lenkwerk/agent/devstack"

// The servers are devstack's.
type (
	Server  = devstack.EtcdServer
	Cluster = devstack.EtcdCluster
	Options = devstack.EtcdOptions
)

// Start, StartServer, NewCluster, FreePorts: see devstack.
var (
	Start       = devstack.StartEtcd
	StartServer = devstack.StartEtcdServer
	NewCluster  = devstack.NewEtcdCluster
	FreePorts   = devstack.FreePorts
)
