package etcd

// WatchRestarts reports how many times s re-established an etcd watch.
func WatchRestarts(s *Store) int64 { return s.watchRestarts.Load() }

// SharedClients reports how many clients the process-wide pool holds.
func SharedClients() int { return sharedClients() }
