package etcd

import "github.com/bagger/lenkwerk/kvdriver"

// WatchRestarts reports how many times s re-established an etcd watch.
func WatchRestarts(s *kvdriver.Store) int64 {
	var d *Driver
	if !s.As(&d) {
		panic("not an etcd store")
	}
	return d.watchRestarts.Load()
}

// SharedClients reports how many clients the process-wide pool holds.
func SharedClients() int { return sharedClients() }
