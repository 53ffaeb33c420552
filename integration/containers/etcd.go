package containers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// Etcd is an etcd cluster of one or more member containers, named etcd0,
// etcd1, … on the network.
type Etcd struct {
	Members []*Container
}

// StartEtcd runs an n-member etcd cluster on nw and waits until every
// member reports itself healthy (it has a leader).
func StartEtcd(tb testing.TB, nw *Network, img Images, n int) *Etcd {
	tb.Helper()
	return StartEtcdNamed(tb, nw, img, "etcd", n)
}

// StartEtcdNamed is StartEtcd with members named base0, base1, …, for a
// second etcd on the same network.
func StartEtcdNamed(tb testing.TB, nw *Network, img Images, base string, n int) *Etcd {
	tb.Helper()
	var peers []string
	for i := range n {
		peers = append(peers, fmt.Sprintf("%s%d=http://%s%d:2380", base, i, base, i))
	}
	e := &Etcd{Members: make([]*Container, n)}
	// Members wait for each other's votes: start them together.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		name := fmt.Sprintf("%s%d", base, i)
		wg.Go(func() {
			e.Members[i], errs[i] = start(context.Background(), tb, []*Network{nw}, name, img.Etcd,
				testcontainers.WithEntrypoint(img.EtcdEntrypoint),
				testcontainers.WithCmd(
					"--name", name,
					"--data-dir", "/var/lib/etcd/"+name,
					"--listen-client-urls", "http://0.0.0.0:2379",
					"--advertise-client-urls", "http://"+name+":2379",
					"--listen-peer-urls", "http://0.0.0.0:2380",
					"--initial-advertise-peer-urls", "http://"+name+":2380",
					"--initial-cluster", strings.Join(peers, ","),
					"--initial-cluster-token", "lenkwerk-test",
					"--initial-cluster-state", "new",
					"--log-level", "warn",
				),
				testcontainers.WithExposedPorts("2379/tcp"),
			)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	for i := range e.Members {
		if err := e.WaitHealthy(ctx, i); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// ErrNoMemberRuns is URL's error when every member is stopped.
var ErrNoMemberRuns = errors.New("no etcd member runs")

// Hosts is "member:2379,…", every member as containers on the network
// reach it (Patroni's etcd3 hosts).
func (e *Etcd) Hosts() string {
	var eps []string
	for _, m := range e.Members {
		eps = append(eps, m.Name+":2379")
	}
	return strings.Join(eps, ",")
}

// InternalURL is the etcd:// store URL containers on the network use, with
// every member.
func (e *Etcd) InternalURL() string {
	var eps []string
	for _, m := range e.Members {
		eps = append(eps, m.Name+":2379")
	}
	return "etcd://" + strings.Join(eps, ",")
}

// URL is the host's etcd:// store URL with the members that run, on their
// current host ports.
func (e *Etcd) URL(ctx context.Context) (string, error) {
	eps, err := runningEndpoints(ctx, e.Members, "2379/tcp")
	if err != nil {
		return "", err
	}
	if len(eps) == 0 {
		return "", ErrNoMemberRuns
	}
	return "etcd://" + strings.Join(eps, ","), nil
}

// WaitHealthy waits until member i answers /health with health true, which
// it does once the cluster has a leader.
func (e *Etcd) WaitHealthy(ctx context.Context, i int) error {
	m := e.Members[i]
	return testutil.Poll(ctx, 90*time.Second, m.Name+" healthy", func(ctx context.Context) (bool, error) {
		ep, err := m.Endpoint(ctx, "2379/tcp")
		if err != nil {
			return false, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ep+"/health", nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var h struct {
			Health string `json:"health"`
			Reason string `json:"reason"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return false, fmt.Errorf("/health: %s: %w", resp.Status, err)
		}
		if h.Health != "true" {
			return false, fmt.Errorf("/health: %s %q", h.Health, h.Reason)
		}
		return true, nil
	})
}

// Restart starts member i again after Stop and waits until it is healthy.
func (e *Etcd) Restart(ctx context.Context, i int) error {
	if err := e.Members[i].Start(ctx); err != nil {
		return err
	}
	return e.WaitHealthy(ctx, i)
}
