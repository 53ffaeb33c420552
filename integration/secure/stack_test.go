package secure

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Names the tests share.
const (
	prefix       = "/bagger"
	agentRole    = "lenkwerk_agent"  // PostgreSQL role, and the CN of its certificate
	etcdUser     = "lenkwerk-agent"  // etcd user and role, and the CN of its certificate
	readerUser   = "bagger_node"     // a pgkv consumer, member of lenkwerk_kv_reader
	operatorRole = "bagger_operator" // a configuration tool, member of lenkwerk_config
	rootPass     = "root-Pa55-etcd"  // etcd root's password
	agentPass    = "agent-Pa55-etcd" // etcd agent user's password
	nodeUser     = "bagger-node"     // etcd user and role of storage nodes: read only
	nodePass     = "node-Pa55-etcd"
	readerPass   = "reader-Pa55-pg" // PostgreSQL password of readerUser
	etcdTimeout  = "dial-timeout=3s&request-timeout=5s"
)

// pki is the test's certificates: one CA for everything, and a second CA
// nobody trusts.
type pki struct {
	dir       string
	ca, other *certs.CA
	pgServer  certs.Pair
	etcdSrv   certs.Pair
	postgres  certs.Pair // PostgreSQL superuser client certificate
	agent     certs.Pair // CN lenkwerk_agent
	etcdAgent certs.Pair // CN lenkwerk-agent
	etcdAdmin certs.Pair // CN etcd-admin (no such etcd user: password auth)
	otherCli  certs.Pair // signed by the other CA
	operator  certs.Pair // CN bagger_operator, a member of lenkwerk_config
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	var err error
	must := func(pair certs.Pair, err error) certs.Pair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	if p.ca, err = certs.NewCA(filepath.Join(dir, "ca"), "Lenkwerk test CA"); err != nil {
		t.Fatal(err)
	}
	if p.other, err = certs.NewCA(filepath.Join(dir, "other"), "Untrusted CA"); err != nil {
		t.Fatal(err)
	}
	p.pgServer = must(p.ca.Server("pg-server", "127.0.0.1", "localhost"))
	p.etcdSrv = must(p.ca.Server("etcd-server", "127.0.0.1", "localhost"))
	p.postgres = must(p.ca.Client("postgres"))
	p.agent = must(p.ca.Client(agentRole))
	p.etcdAgent = must(p.ca.Client(etcdUser))
	p.etcdAdmin = must(p.ca.Client("etcd-admin"))
	p.otherCli = must(p.other.Client(agentRole))
	p.operator = must(p.ca.Client(operatorRole))
	return p
}

// pgServer is a PostgreSQL cluster that takes TCP connections only over
// TLS, with a Lenkwerk database migrated over verify-full as the
// superuser (certificate).
type pgServer struct {
	c    *pgtest.Cluster
	pki  *pki
	name string // the Lenkwerk database
}

// lenkwerkDB is the Lenkwerk database's name, as in README.md's pg_hba.conf.
const lenkwerkDB = "lenkwerk"

// recommendedHBA is the pg_hba.conf README.md recommends, read from it (the
// fenced block that starts "# pg_hba.conf for Lenkwerk"), with the
// README's network 10.0.0.0/8 as the loopback: the tests run exactly what
// the guide says. It refuses plaintext and physical replication, lets
// readerUser into the Lenkwerk database with a scram password, the agent
// into it (only) with its certificate, everyone else in with a certificate
// whose CN is the role (TLS only).
func recommendedHBA(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "```\n# pg_hba.conf for Lenkwerk")
	if ok {
		block, _, ok = strings.Cut(block, "```")
	}
	if !ok {
		t.Fatal("README.md has no pg_hba.conf block starting \"# pg_hba.conf for Lenkwerk\"")
	}
	_, block, _ = strings.Cut(block, "\n") // the rest of the marker line
	var lines []string
	for _, line := range strings.Split(block, "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			if f[1] != "all" && f[1] != "replication" && f[1] != lenkwerkDB {
				t.Fatalf("README.md's pg_hba.conf names database %q, the tests %q", f[1], lenkwerkDB)
			}
			lines = append(lines, strings.ReplaceAll(strings.Join(f, " "), "10.0.0.0/8", "127.0.0.1/32"))
		}
	}
	if len(lines) < 5 {
		t.Fatalf("README.md's pg_hba.conf block has %d rules: %q", len(lines), lines)
	}
	return lines
}

func startPG(t *testing.T, p *pki) *pgServer {
	t.Helper()
	c := pgtest.StartCluster(t, pgtest.Options{
		TLS: &pgtest.TLS{CertFile: p.pgServer.CertFile, KeyFile: p.pgServer.KeyFile, CAFile: p.ca.CertFile},
		HBA: recommendedHBA(t),
	})
	s := &pgServer{c: c, pki: p, name: lenkwerkDB}
	// Over the socket, which pg_hba leaves to the superuser; the cluster
	// is the test's own, and goes with it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.SocketDir(), c.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+lenkwerkDB); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, s.urlFor(lenkwerkDB, "postgres", p.postgres), migrations.Options{}); err != nil {
		t.Fatalf("migrate over verify-full: %v", err)
	}
	return s
}

// newDatabase creates a database (over the socket) and migrates it over
// verify-full as the superuser (certificate); it returns the name.
func (s *pgServer) newDatabase(t *testing.T, opts migrations.Options) string {
	t.Helper()
	u, err := url.Parse(s.c.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrations.Up(ctx, s.urlFor(name, "postgres", s.pki.postgres), opts); err != nil {
		t.Fatalf("migrate over verify-full: %v", err)
	}
	return name
}

// url is a verify-full URL for user with the client certificate pair
// (zero Pair: none) trusting the test CA.
func (s *pgServer) url(user string, pair certs.Pair, extra ...string) string {
	return s.urlFor(s.name, user, pair, extra...)
}

// urlFor is url for database db.
func (s *pgServer) urlFor(db, user string, pair certs.Pair, extra ...string) string {
	q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {s.pki.ca.CertFile}}
	if pair.CertFile != "" {
		q.Set("sslcert", pair.CertFile)
		q.Set("sslkey", pair.KeyFile)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: "127.0.0.1:" + strconv.Itoa(s.c.Port()), Path: "/" + db, RawQuery: q.Encode()}
	return u.String()
}

// etcdServer is an embedded etcd member serving clients over TLS only,
// with client certificate authentication and auth enabled.
type etcdServer struct {
	e        *embed.Etcd
	endpoint string
	pki      *pki
}

func startEtcd(t *testing.T, p *pki) *etcdServer {
	t.Helper()
	ports, err := etcdtest.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := embed.NewConfig()
	cfg.Name = "secure"
	cfg.Dir = filepath.Join(dir, "data")
	cu, _ := url.Parse("https://127.0.0.1:" + strconv.Itoa(ports[0]))
	pu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(ports[1]))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile:       p.etcdSrv.CertFile,
		KeyFile:        p.etcdSrv.KeyFile,
		TrustedCAFile:  p.ca.CertFile,
		ClientCertAuth: true, // etcd --client-cert-auth
	}
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd failed while starting: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready within 30s")
	}
	s := &etcdServer{e: e, endpoint: cu.Host, pki: p}
	s.enableAuth(t)
	return s
}

// client is a clientv3 client over TLS with the given certificate.
func (s *etcdServer) client(t *testing.T, pair certs.Pair, user, pass string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: pair.CertFile, KeyFile: pair.KeyFile, TrustedCAFile: s.pki.ca.CertFile, Logger: zap.NewNop()}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint}, TLS: tlsCfg, Username: user, Password: pass, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// enableAuth does what the README tells operators to do with etcdctl:
//
//	etcdctl user add root; etcdctl user grant-role root root
//	etcdctl role add lenkwerk-agent
//	etcdctl role grant-permission lenkwerk-agent readwrite /bagger /bagger0
//	etcdctl user add lenkwerk-agent; etcdctl user grant-role lenkwerk-agent lenkwerk-agent
//	etcdctl role add bagger-node
//	etcdctl role grant-permission bagger-node read /bagger /bagger0
//	etcdctl user add bagger-node; etcdctl user grant-role bagger-node bagger-node
//	etcdctl auth enable
func (s *etcdServer) enableAuth(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.client(t, s.pki.etcdAdmin, "", "")
	type step struct {
		what string
		do   func() error
	}
	steps := []step{
		{"user add root", func() error { _, err := c.UserAdd(ctx, "root", rootPass); return err }},
		{"user grant-role root root", func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err }},
	}
	// The agent and the storage nodes: a role and a user of the same name
	// each, the role granted [/bagger, /bagger0): the key /bagger and
	// everything under /bagger/ (the driver lists and watches exactly this
	// range), not /baggerX.
	for _, u := range []struct {
		name, pass string
		perm       clientv3.PermissionType
	}{
		{etcdUser, agentPass, clientv3.PermissionType(clientv3.PermReadWrite)},
		{nodeUser, nodePass, clientv3.PermissionType(clientv3.PermRead)},
	} {
		steps = append(steps,
			step{"role add " + u.name, func() error { _, err := c.RoleAdd(ctx, u.name); return err }},
			step{"role grant-permission " + u.name, func() error {
				_, err := c.RoleGrantPermission(ctx, u.name, prefix, prefix+"0", u.perm)
				return err
			}},
			step{"user add " + u.name, func() error { _, err := c.UserAdd(ctx, u.name, u.pass); return err }},
			step{"user grant-role " + u.name, func() error { _, err := c.UserGrantRole(ctx, u.name, u.name); return err }},
		)
	}
	steps = append(steps, step{"auth enable", func() error { _, err := c.AuthEnable(ctx); return err }})
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("etcd %s: %v", st.what, err)
		}
	}
}

// url is an etcd:// URL over TLS with the test CA, a client certificate
// (zero Pair: none) and, with user set, the password from a file.
func (s *etcdServer) url(t *testing.T, pair certs.Pair, user, pass string) string {
	q := "ca-file=" + url.QueryEscape(s.pki.ca.CertFile) + "&" + etcdTimeout
	if pair.CertFile != "" {
		q += "&cert-file=" + url.QueryEscape(pair.CertFile) + "&key-file=" + url.QueryEscape(pair.KeyFile)
	}
	if user != "" {
		pwFile := filepath.Join(t.TempDir(), "etcd-password")
		if err := os.WriteFile(pwFile, []byte(pass+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		q += "&username=" + url.QueryEscape(user) + "&password-file=" + url.QueryEscape(pwFile)
	}
	return fmt.Sprintf("etcd://%s?%s", s.endpoint, q)
}

// escape is url.QueryEscape, for editing URLs built by url.
func escape(s string) string { return url.QueryEscape(s) }

// testContext is the context of a test's checks: it ends after d, or when
// the test ends.
func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
