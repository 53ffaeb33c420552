package harness

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/containers"
)

// WithPatroni runs the Lenkwerk database on a Patroni cluster of two
// PostgreSQL members (pg0 the first primary, pg1 its replica) instead of a
// single PostgreSQL, containers backend only. Patroni keeps its state in
// an etcd member of its own (dcs0, on PostgreSQL's network), not in the
// store: the store then holds exactly the database's rows (the
// convergence check allows nothing extra, and Patroni's keys under
// /service/ would be extra), and the store levers (StopStore, StopNode)
// leave the database alone, where a shared etcd's outage would also stop
// Patroni from renewing its leader key and demote the primary. The
// README's deployment may share one etcd cluster: Patroni's keys stay
// under its namespace, outside the agent's prefix. The agent connects with a multi-host URL naming both
// members and target_session_attrs=read-write; the agent's slot is one of
// Patroni's permanent slots, declared once `migrate up` created it.
// DatabaseURL and ConfigURL follow the primary (multi-host URLs); SwitchoverPostgres and
// FailoverPostgres move it. The PostgreSQL levers (StopPostgres,
// KillPostgres, StartPostgres) return ErrUnsupported, and so does a PGKV
// store.
func WithPatroni() Option { return func(c *config) { c.patroni = true } }

// patroniFailoverTimeout bounds a failover: Patroni's leader key expires
// (ttl 20 s), the replica promotes itself and takes writes.
const patroniFailoverTimeout = 90 * time.Second

// patroniCtrs is the containers backend with a Patroni cluster for
// PostgreSQL: it keeps ctrs's etcd, networks and lenkwerk containers and
// replaces what concerns PostgreSQL.
type patroniCtrs struct {
	*ctrs
	pat *containers.Patroni
}

func startPatroni(ctx context.Context, tb testing.TB, cfg config, img containers.Images) (*patroniCtrs, error) {
	if cfg.kv == PGKV {
		return nil, fmt.Errorf("%w: WithPatroni with a pgkv store", ErrUnsupported)
	}
	c := &ctrs{tb: tb, cfg: cfg, img: img}
	c.dbNet = containers.NewNetwork(tb)
	c.kvNet = containers.NewNetwork(tb)
	n := 1
	if cfg.kv == EtcdCluster {
		n = 3
	}
	c.etcd = containers.StartEtcd(tb, c.kvNet, c.img, n)
	// Patroni's own etcd, on PostgreSQL's network: see WithPatroni.
	dcs := containers.StartEtcdNamed(tb, c.dbNet, c.img, "dcs", 1)
	p := &patroniCtrs{ctrs: c, pat: containers.StartPatroni(tb, []*containers.Network{c.dbNet}, dcs.Hosts(), agent.DefaultSlot, 2)}
	admin, err := p.pat.URL(ctx, 0, Database, "")
	if err != nil {
		return nil, err
	}
	if cfg.migrateCmd {
		if out, err := c.run(ctx, "migrate", []string{"migrate", "up", "--database-url", p.pat.InternalURL(Database, "")}); err != nil {
			return nil, fmt.Errorf("migrate job: %w\n%s", err, out)
		}
	} else if err := migrate(ctx, admin); err != nil {
		return nil, err
	}
	// Migration 7 created the slot; Patroni ignored it until now
	// (ignore_slots, docker/patroni/entrypoint.sh) and from now on keeps
	// it on the primary and copies it to the replica.
	if err := p.pat.SetPermanentSlot(ctx, 0, agent.DefaultSlot, Database); err != nil {
		return nil, err
	}
	if err := p.pat.WaitSlotSafe(ctx, 1, agent.DefaultSlot, 0, time.Minute); err != nil {
		return nil, fmt.Errorf("patroni's copy of the slot on the replica: %w", err)
	}
	return p, nil
}

// urls names every running member (target_session_attrs=read-write): the
// host's connections follow the primary even while a lever moves it.
func (p *patroniCtrs) urls(ctx context.Context) (string, string, error) {
	admin, err := p.pat.HostURL(ctx, Database, "")
	if err != nil {
		return "", "", err
	}
	kv, err := p.etcd.URL(ctx)
	if errors.Is(err, containers.ErrNoMemberRuns) {
		return admin, "", nil
	}
	return admin, kv, err
}

func (p *patroniCtrs) agentDB() string { return p.pat.InternalURL(Database, "lenkwerk_agent") }

func (p *patroniCtrs) agentKV() string { return p.etcd.InternalURL() }

func (p *patroniCtrs) stopPostgres(context.Context) error { return errPatroniLever }

func (p *patroniCtrs) killPostgres(context.Context) error { return errPatroniLever }

func (p *patroniCtrs) startPostgres(context.Context) error { return errPatroniLever }

var errPatroniLever = fmt.Errorf("%w with WithPatroni: use SwitchoverPostgres or FailoverPostgres", ErrUnsupported)

// patroni returns the Stack's Patroni backend, or ErrUnsupported.
func (s *Stack) patroni(what string) (*patroniCtrs, error) {
	p, ok := s.b.(*patroniCtrs)
	if !ok {
		return nil, fmt.Errorf("%w: %s needs WithPatroni", ErrUnsupported, what)
	}
	return p, nil
}

// patroniLever pulls lever what (see lever; it may move ports) on the
// Patroni backend; without WithPatroni it returns ErrUnsupported naming
// method.
func (s *Stack) patroniLever(ctx context.Context, method, what string, f func(context.Context, *patroniCtrs) error) error {
	p, err := s.patroni(method)
	if err != nil {
		return err
	}
	return s.lever(ctx, what, true, func(ctx context.Context) error { return f(ctx, p) })
}

// Patroni is the Stack's Patroni cluster, nil without WithPatroni.
func (s *Stack) Patroni() *containers.Patroni {
	p, err := s.patroni("Patroni")
	if err != nil {
		return nil
	}
	return p.pat
}

// SwitchoverPostgres hands the primary role to the replica the planned way
// (Patroni's REST API, POST /switchover) and returns once the new primary
// takes writes; DatabaseURL and ConfigURL then name it. The old primary
// becomes the new one's replica. ErrUnsupported without WithPatroni.
func (s *Stack) SwitchoverPostgres(ctx context.Context) error {
	return s.patroniLever(ctx, "SwitchoverPostgres", "switch over PostgreSQL", func(ctx context.Context, p *patroniCtrs) error {
		return p.replacePrimary(ctx, func(ctx context.Context, old int) error {
			return p.pat.Switchover(ctx, old, (old+1)%len(p.pat.Members))
		})
	})
}

// FailoverPostgres kills the primary's container (SIGKILL: no shutdown,
// no hand-over) and returns once Patroni has promoted the replica and it
// takes writes; DatabaseURL and ConfigURL then name it. The old primary
// stays down until RejoinPostgres. ErrUnsupported without WithPatroni.
func (s *Stack) FailoverPostgres(ctx context.Context) error {
	return s.patroniLever(ctx, "FailoverPostgres", "fail PostgreSQL over", func(ctx context.Context, p *patroniCtrs) error {
		return p.replacePrimary(ctx, func(ctx context.Context, old int) error {
			return p.pat.Members[old].Kill(ctx)
		})
	})
}

// replacePrimary has another member take over as the primary: oust acts on
// the current primary (member old), then replacePrimary waits until
// another member takes writes.
func (p *patroniCtrs) replacePrimary(ctx context.Context, oust func(ctx context.Context, old int) error) error {
	old := p.pat.Primary(ctx)
	if old < 0 {
		return containers.ErrNoPrimary
	}
	if err := oust(ctx, old); err != nil {
		return err
	}
	_, err := p.pat.WaitPrimary(ctx, patroniFailoverTimeout, old)
	return err
}

// RejoinPostgres starts the Patroni members FailoverPostgres killed and
// returns once each streams from the primary as its replica (Patroni
// rewinds a diverged old primary with pg_rewind) and Patroni calls its
// copy of the agent's slot safe to use after a failover: a failover before
// that may promote a member whose slot lacks catalog rows the agent needs.
// ErrUnsupported without WithPatroni.
func (s *Stack) RejoinPostgres(ctx context.Context) error {
	return s.patroniLever(ctx, "RejoinPostgres", "rejoin PostgreSQL members", func(ctx context.Context, p *patroniCtrs) error {
		for i, m := range p.pat.Members {
			running, err := m.Running(ctx)
			if err != nil {
				return err
			}
			if running {
				continue
			}
			safe, err := p.pat.SlotSafeLines(ctx, i, agent.DefaultSlot)
			if err != nil {
				return err
			}
			if err := m.Start(ctx); err != nil {
				return err
			}
			if err := p.pat.WaitReplica(ctx, i, 3*time.Minute); err != nil {
				return err
			}
			if err := p.pat.WaitSlotSafe(ctx, i, agent.DefaultSlot, safe, 2*time.Minute); err != nil {
				return err
			}
		}
		return nil
	})
}
