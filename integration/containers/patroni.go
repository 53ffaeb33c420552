package containers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// DefaultPatroniImage is the Patroni image docker/build-images.sh builds.
const DefaultPatroniImage = "lenkwerk/patroni:15"

// PatroniImage is the image named by LENKWERK_PATRONI_IMAGE, or the
// default. EnsureImages builds it with the others.
func PatroniImage() string { return envOr("LENKWERK_PATRONI_IMAGE", DefaultPatroniImage) }

// Patroni is a Patroni cluster of PostgreSQL 15 members named pg0, pg1, …,
// keeping its state in an etcd the caller runs. Host access is by trust
// (tests only). Its database DefaultDatabase is created at bootstrap.
type Patroni struct {
	Members []*Container
	Scope   string
}

// patroniBoot bounds a member's bootstrap: initdb, or a base backup of
// the primary for a replica.
const patroniBoot = 2 * time.Minute

// StartPatroni runs n Patroni members on nws whose etcd v3 members are
// etcdHosts ("etcd0:2379,…") and whose agents use the slot named slot,
// the first one alone until it leads (so pg0
// is the first primary), then the others, and returns once every replica
// streams from it.
func StartPatroni(tb testing.TB, nws []*Network, etcdHosts, slot string, n int) *Patroni {
	tb.Helper()
	ctx := context.Background()
	p := &Patroni{Scope: "lenkwerk", Members: make([]*Container, n)}
	for i := range n {
		name := fmt.Sprintf("pg%d", i)
		c, err := start(ctx, tb, nws, name, PatroniImage(),
			testcontainers.WithEnv(map[string]string{
				"PATRONI_NAME":          name,
				"PATRONI_SCOPE":         p.Scope,
				"PATRONI_ETCD3_HOSTS":   etcdHosts,
				"LENKWERK_PATRONI_HOST": name,
				"LENKWERK_DATABASE":     DefaultDatabase,
				"LENKWERK_SLOT":         slot,
				// As StartPostgres: a lost agent connection shows soon.
				"LENKWERK_PG_PARAMETERS": "wal_sender_timeout=10s fsync=off",
			}),
			testcontainers.WithExposedPorts("5432/tcp", "8008/tcp"),
		)
		if err != nil {
			tb.Fatal(err)
		}
		p.Members[i] = c
		if i == 0 {
			if _, err := p.WaitPrimary(ctx, patroniBoot, -1); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for i := 1; i < n; i++ {
		if err := p.WaitReplica(ctx, i, patroniBoot); err != nil {
			tb.Fatal(err)
		}
	}
	return p
}

// InternalURL is the multi-host URL containers on the network use: every
// member, target_session_attrs=read-write, so a client lands on the
// primary whichever member it is.
func (p *Patroni) InternalURL(db, user string) string {
	var hosts []string
	for _, m := range p.Members {
		hosts = append(hosts, m.Name+":5432")
	}
	return pgURL(strings.Join(hosts, ","), db, user) + "&target_session_attrs=read-write"
}

// URL is the host's URL of member i's database db as user ("" for
// postgres), on its current host port.
func (p *Patroni) URL(ctx context.Context, i int, db, user string) (string, error) {
	ep, err := p.Members[i].Endpoint(ctx, "5432/tcp")
	if err != nil {
		return "", err
	}
	return pgURL(ep, db, user), nil
}

// api calls member i's REST API; it returns the status code and body.
func (p *Patroni) api(ctx context.Context, i int, method, path string, body any) (int, []byte, error) {
	ep, err := p.Members[i].Endpoint(ctx, "8008/tcp")
	if err != nil {
		return 0, nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ep+path, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("patroni %s %s %s: %w", p.Members[i].Name, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// apiOK calls member i's REST API and wants 200 OK; another status is an
// error carrying the end of the body.
func (p *Patroni) apiOK(ctx context.Context, i int, method, path string, body any) error {
	code, out, err := p.api(ctx, i, method, path, body)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("patroni %s %s: %d %s", method, path, code, Tail(out, 500))
	}
	return nil
}

// Primary returns the member whose PostgreSQL is the primary and accepts
// writes, or -1.
func (p *Patroni) Primary(ctx context.Context) int {
	for i := range p.Members {
		if !p.runs(ctx, i) {
			continue
		}
		if ok, _ := p.writable(ctx, i); ok {
			return i
		}
	}
	return -1
}

// writable reports whether Patroni on member i calls it the primary and its
// PostgreSQL takes a write transaction.
func (p *Patroni) writable(ctx context.Context, i int) (bool, error) {
	code, _, err := p.api(ctx, i, http.MethodGet, "/primary", nil)
	if err != nil || code != http.StatusOK {
		return false, err
	}
	u, err := p.URL(ctx, i, DefaultDatabase, "")
	if err != nil {
		return false, err
	}
	var txid int64
	err = queryRow(ctx, u+"&target_session_attrs=read-write", "SELECT txid_current()", nil, &txid)
	return err == nil, err
}

// WaitPrimary waits up to timeout until a member other than not (-1: any)
// is the primary and takes writes, and returns it.
func (p *Patroni) WaitPrimary(ctx context.Context, timeout time.Duration, not int) (int, error) {
	got := -1
	err := testutil.Poll(ctx, timeout, "a Patroni primary taking writes", func(ctx context.Context) (bool, error) {
		for i := range p.Members {
			if i == not {
				continue
			}
			if !p.runs(ctx, i) {
				continue
			}
			if ok, _ := p.writable(ctx, i); ok {
				got = i
				return true, nil
			}
		}
		return false, nil
	})
	return got, err
}

// WaitReplica waits up to timeout until member i is a replica streaming
// from the primary (Patroni's /replica answers 200 and its WAL receiver
// streams).
func (p *Patroni) WaitReplica(ctx context.Context, i int, timeout time.Duration) error {
	return testutil.Poll(ctx, timeout, p.Members[i].Name+" streaming as a replica", func(ctx context.Context) (bool, error) {
		code, body, err := p.api(ctx, i, http.MethodGet, "/replica", nil)
		if err != nil {
			return false, err
		}
		if code != http.StatusOK {
			return false, fmt.Errorf("/replica: %d %s", code, Tail(body, 300))
		}
		u, err := p.URL(ctx, i, DefaultDatabase, "")
		if err != nil {
			return false, err
		}
		var streaming bool
		err = queryRow(ctx, u, `SELECT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming')`, nil, &streaming)
		return streaming, err
	})
}

// SetPermanentSlot declares the logical slot named slot, in database db
// with plugin pgoutput, one of Patroni's permanent slots (PATCH /config,
// through member i): the primary keeps it (creating it when missing) and
// the replicas keep a copy, moved forward to what the primary's consumer
// confirmed.
func (p *Patroni) SetPermanentSlot(ctx context.Context, i int, slot, db string) error {
	body := map[string]any{"slots": map[string]any{slot: map[string]string{"type": "logical", "database": db, "plugin": "pgoutput"}}}
	return p.apiOK(ctx, i, http.MethodPatch, "/config", body)
}

// Switchover asks Patroni, through member leader, to hand the primary role
// from leader to candidate (POST /switchover; Patroni answers once the
// candidate has been promoted).
func (p *Patroni) Switchover(ctx context.Context, leader, candidate int) error {
	body := map[string]string{"leader": p.Members[leader].Name, "candidate": p.Members[candidate].Name}
	return p.apiOK(ctx, leader, http.MethodPost, "/switchover", body)
}

// ErrNoPrimary is returned when no member is the primary.
var ErrNoPrimary = errors.New("no Patroni member is the primary")

// SlotState is a replication slot as one member sees it.
type SlotState struct {
	Member         string
	Exists, Active bool
	ConfirmedFlush string
}

// Slot reads slot on member i ("" for a member that does not answer).
func (p *Patroni) Slot(ctx context.Context, i int, slot string) (SlotState, error) {
	st := SlotState{Member: p.Members[i].Name}
	u, err := p.URL(ctx, i, DefaultDatabase, "")
	if err != nil {
		return st, err
	}
	err = queryRow(ctx, u, `SELECT active, coalesce(confirmed_flush_lsn::text, '') FROM pg_replication_slots WHERE slot_name = $1`, []any{slot}, &st.Active, &st.ConfirmedFlush)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	st.Exists = err == nil
	return st, err
}

func (s SlotState) String() string {
	switch {
	case !s.Exists:
		return s.Member + ": no slot"
	case s.Active:
		return fmt.Sprintf("%s: slot active, confirmed %s", s.Member, s.ConfirmedFlush)
	}
	return fmt.Sprintf("%s: slot inactive, confirmed %s", s.Member, s.ConfirmedFlush)
}

// WaitSlot waits up to timeout until member i has the replication slot
// named slot (on a replica: Patroni's copy of the primary's).
func (p *Patroni) WaitSlot(ctx context.Context, i int, slot string, timeout time.Duration) error {
	return testutil.Poll(ctx, timeout, "slot "+slot+" on "+p.Members[i].Name, func(ctx context.Context) (bool, error) {
		st, err := p.Slot(ctx, i, slot)
		return st.Exists, err
	})
}

// HostURL is the host's multi-host URL of database db as user ("" for
// postgres): every running member on its current host port,
// target_session_attrs=read-write, so a connection lands on whichever
// member is the primary. It is "" when no member runs.
func (p *Patroni) HostURL(ctx context.Context, db, user string) (string, error) {
	eps, err := runningEndpoints(ctx, p.Members, "5432/tcp")
	if err != nil {
		return "", err
	}
	if len(eps) == 0 {
		return "", nil
	}
	return pgURL(strings.Join(eps, ","), db, user) + "&target_session_attrs=read-write", nil
}

// runs reports whether member i was started and its container runs.
func (p *Patroni) runs(ctx context.Context, i int) bool { return runs(ctx, p.Members[i]) }

// SlotSafeLines counts the lines of member i's log in which Patroni calls
// its copy of slot safe to use after a failover: the physical slot of the
// replica on the primary holds back catalog rows (hot_standby_feedback)
// at least as far as the logical slot needs. A copy not yet safe may be
// unusable after a promotion (Patroni then warns "Logical replication
// slots that might be unsafe to use after promote").
func (p *Patroni) SlotSafeLines(ctx context.Context, i int, slot string) (int, error) {
	b, err := p.Members[i].Logs(ctx)
	if err != nil {
		return 0, err
	}
	return bytes.Count(b, []byte("Logical slot "+slot+" is safe to be used after a failover")), nil
}

// WaitSlotSafe waits up to timeout until member i's log has more than
// before SlotSafeLines.
func (p *Patroni) WaitSlotSafe(ctx context.Context, i int, slot string, before int, timeout time.Duration) error {
	return testutil.Poll(ctx, timeout, "Patroni on "+p.Members[i].Name+" to call its copy of slot "+slot+" safe", func(ctx context.Context) (bool, error) {
		n, err := p.SlotSafeLines(ctx, i, slot)
		return n > before, err
	})
}
