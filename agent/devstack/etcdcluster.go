package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
)

// EtcdCluster is an etcd cluster of embedded members in this process.
type EtcdCluster struct {
	// Members are the cluster's servers, member i named "m<i>" with its
	// data in dir/m<i>. Stop and Start them to simulate member failures.
	Members []*EtcdServer
}

// NewEtcdCluster starts an n-member cluster with its data under dir, on free
// loopback ports, and waits until every member serves clients.
func NewEtcdCluster(ctx context.Context, dir string, n int, opts EtcdOptions) (*EtcdCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("devstack: etcd: cluster of %d members", n)
	}
	ports, err := FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	token := make([]byte, 8)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peerURL(ports[2*i+1])))
	}
	c := &EtcdCluster{}
	for i := range n {
		o := opts
		o.Name = fmt.Sprintf("m%d", i)
		o.Dir = filepath.Join(dir, o.Name)
		o.LogOutput = ""
		o.ClientPort, o.PeerPort = ports[2*i], ports[2*i+1]
		o.initialCluster = strings.Join(initial, ",")
		o.clusterToken = "etcdtest-" + hex.EncodeToString(token)
		s, err := newEtcdServer(o)
		if err != nil {
			return nil, err
		}
		c.Members = append(c.Members, s)
	}
	// A member becomes ready only once a quorum has formed, so members
	// must start concurrently.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, m := range c.Members {
		wg.Go(func() { errs[i] = m.Start(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Endpoints returns every member's client address.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// URL returns the Lenkwerk store URL naming every member,
// "etcd://127.0.0.1:p1,127.0.0.1:p2,...".
func (c *EtcdCluster) URL() string { return "etcd://" + strings.Join(c.Endpoints(), ",") }

// Leader returns the index of the member that is currently raft leader, or
// -1 if no running member knows a leader.
func (c *EtcdCluster) Leader() int {
	for _, m := range c.Members {
		e := m.Etcd()
		if e == nil {
			continue
		}
		lead := uint64(e.Server.Leader())
		if lead == 0 {
			continue
		}
		for j, mm := range c.Members {
			if ee := mm.Etcd(); ee != nil && uint64(ee.Server.MemberID()) == lead {
				return j
			}
		}
	}
	return -1
}

// Close stops every member concurrently.
func (c *EtcdCluster) Close() error {
	errs := make([]error, len(c.Members))
	var wg sync.WaitGroup
	for i, m := range c.Members {
		wg.Go(func() { errs[i] = m.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
