package secure

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/certs"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// What the recommended setup keeps out: connections pg_hba.conf or TLS
// refuse, and what an authenticated role still may not do.

// TestRefused shows that what TLS and authentication must keep out stays
// out: plaintext, a server certificate from a CA the client does not
// trust, a client certificate from a CA the server does not trust, no
// client certificate, and a wrong password. Each error is checked for the
// reason, so a refusal for another cause does not pass.
func TestRefused(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := newPKI(t)
	pg := startPG(t, p)
	etcd := startEtcd(t, p)

	t.Run("postgres", func(t *testing.T) {
		good := pg.url("postgres", p.postgres)
		conn, err := pgx.Connect(ctx, good)
		if err != nil {
			t.Fatalf("the good URL is refused too: %v", err)
		}
		conn.Close(ctx)
		wrongCA := strings.Replace(good, "sslrootcert=", "sslrootcert="+escape(p.other.CertFile)+"&x=", 1)
		for _, tc := range []struct {
			name, url string
			want      []string // any of these in the error
		}{
			{"plaintext", pg.url("postgres", p.postgres, "sslmode", "disable"), []string{"no encryption"}},
			{"plaintext replication", pg.url(agentRole, p.agent, "sslmode", "disable", "replication", "database"), []string{"no encryption"}},
			{"sslmode=prefer falls back to nothing weaker", pg.url("postgres", certs.Pair{}, "sslmode", "prefer"), []string{"certificate authentication failed", "connection requires a valid client certificate"}},
			{"wrong CA for the server", wrongCA, []string{"certificate signed by unknown authority", "x509"}},
			{"client certificate of another CA", pg.url(agentRole, p.otherCli), []string{"unknown ca", "certificate", "bad certificate"}},
			{"no client certificate", pg.url(agentRole, certs.Pair{}), []string{"certificate authentication failed", "connection requires a valid client certificate"}},
			{"certificate of another role", pg.url("postgres", p.agent), []string{"certificate authentication failed"}},
		} {
			conn, err := pgx.Connect(ctx, tc.url)
			if err == nil {
				conn.Close(ctx)
				t.Errorf("%s: connection accepted", tc.name)
				continue
			}
			if !containsAny(err.Error(), tc.want) {
				t.Errorf("%s: refused with %v, want one of %q", tc.name, err, tc.want)
			}
		}
	})

	t.Run("etcd", func(t *testing.T) {
		good := etcd.url(t, p.etcdAgent, etcdUser, agentPass)
		s, err := kvdriver.Open(ctx, good)
		if err != nil {
			t.Fatalf("the good URL is refused too: %v", err)
		}
		s.Close()
		const wrongPass = "Wr0ng-etcd-Pa55"
		for _, tc := range []struct {
			name, url string
			probe     *tls.Config // a TLS config failing like the URL's
			reason    []string    // why the probe fails
		}{
			{"plaintext", "etcd://" + etcdUser + ":" + agentPass + "@" + etcd.endpoint + "?" + etcdTimeout + "&tls=false", nil, nil},
			{"no client certificate", etcd.url(t, certs.Pair{}, etcdUser, agentPass), tlsConfig(t, p.ca, certs.Pair{}), []string{"certificate required", "bad certificate"}},
			{"wrong CA for the server", strings.Replace(good, "ca-file="+escape(p.ca.CertFile), "ca-file="+escape(p.other.CertFile), 1), tlsConfig(t, p.other, p.etcdAgent), []string{"certificate signed by unknown authority"}},
			{"client certificate of another CA", etcd.url(t, p.otherCli, etcdUser, agentPass), tlsConfig(t, p.ca, p.otherCli), []string{"unknown certificate authority", "bad certificate", "certificate required"}}, // Go withholds a certificate the server's CA list does not name,
			{"wrong password", etcd.url(t, p.etcdAgent, etcdUser, wrongPass), nil, nil},
			{"wrong password in the URL", strings.Replace(etcd.url(t, p.etcdAgent, "", ""), "etcd://", "etcd://"+etcdUser+":"+wrongPass+"@", 1), nil, nil},
		} {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				// The etcd client reports a failed handshake only as a
				// dial timeout; a handshake of our own shows the reason.
				if tc.probe != nil {
					err := tlsProbe(etcd.endpoint, tc.probe)
					if err == nil || !containsAny(err.Error(), tc.reason) {
						t.Errorf("%s: TLS handshake: %v, want one of %q", tc.name, err, tc.reason)
					}
				}
				s, err := kvdriver.Open(ctx, tc.url)
				if err == nil {
					// A store that opened must still be unusable.
					_, err = s.Put(ctx, prefix+"/Config/refused", []byte(`1`))
					s.Close()
					if err == nil {
						t.Fatalf("%s: accepted", tc.name)
					}
				}
				t.Logf("%s: %v", tc.name, err)
				if tc.probe != nil && !containsAny(err.Error(), tc.reason) {
					t.Errorf("%s: Open error %v does not say why (one of %q)", tc.name, err, tc.reason)
				}
				if strings.Contains(err.Error(), wrongPass) || strings.Contains(err.Error(), agentPass) {
					t.Errorf("%s: the error shows a password: %v", tc.name, err)
				}
				if errors.Is(err, kvdriver.ErrInvalidURL) {
					t.Errorf("%s: refused as an invalid URL (%v), not by the server", tc.name, err)
				}
			})
		}
	})
}

// tlsConfig trusts ca and presents pair (zero Pair: no certificate).
func tlsConfig(t *testing.T, ca *certs.CA, pair certs.Pair) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	if pair.CertFile != "" {
		c, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// tlsProbe handshakes with addr and reads once: with TLS 1.3 the server
// refuses a client certificate only after the client's handshake is done,
// so its alert arrives on the first read.
func tlsProbe(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestRecommendedHBA checks README.md's pg_hba.conf (startPG runs it as
// written): lenkwerk_agent, with its valid certificate, gets no physical
// replication (pg_basebackup, which copies the whole cluster, nor a
// physical replication connection) and no connection to another database;
// its logical replication connection to the Lenkwerk database works
// (TestAgentTLSBothSides streams through it).
//
// It also shows what the REPLICATION attribute allows whatever the grants
// say, which is why the Lenkwerk database must be a database of its own:
// in the database the agent may connect to, it decodes a table it has no
// SELECT on through another output plugin, and drops a slot it did not
// create.
func TestRecommendedHBA(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := newPKI(t)
	pg := startPG(t, p)
	agentURL := pg.url(agentRole, p.agent)

	t.Run("no physical replication", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, agentURL+"&replication=true")
		if err == nil {
			_, idErr := pglogrepl.IdentifySystem(ctx, conn)
			conn.Close(ctx)
			t.Fatalf("physical replication connection as %s accepted (IDENTIFY_SYSTEM: %v)", agentRole, idErr)
		}
		if !strings.Contains(err.Error(), "pg_hba.conf rejects replication connection") {
			t.Errorf("physical replication refused with %v, want pg_hba's rejection", err)
		}

		dir := filepath.Join(t.TempDir(), "backup")
		cmd := exec.CommandContext(ctx, filepath.Join(pg.c.BinDir(), "pg_basebackup"), "-d", agentURL, "-D", dir, "-X", "none", "--no-sync")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("pg_basebackup as %s copied the cluster:\n%s", agentRole, out)
		}
		if !strings.Contains(string(out), "pg_hba.conf rejects replication connection") {
			t.Errorf("pg_basebackup failed with %v, want pg_hba's rejection:\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
			t.Error("pg_basebackup left a copy of the cluster")
		}
	})

	t.Run("logical replication to the Lenkwerk database only", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, agentURL+"&replication=database")
		if err != nil {
			t.Fatalf("logical replication connection refused: %v", err)
		}
		defer conn.Close(ctx)
		if _, err := pglogrepl.IdentifySystem(ctx, conn); err != nil {
			t.Fatalf("IDENTIFY_SYSTEM: %v", err)
		}
		for _, extra := range []string{"", "&replication=database"} {
			c, err := pgconn.Connect(ctx, pg.urlFor("postgres", agentRole, p.agent)+extra)
			if err == nil {
				c.Close(ctx)
				t.Errorf("connection of %s to database postgres (%q) accepted", agentRole, extra)
			} else if !strings.Contains(err.Error(), "pg_hba.conf rejects connection") {
				t.Errorf("connection to database postgres (%q) refused with %v, want pg_hba's rejection", extra, err)
			}
		}
	})

	t.Run("what REPLICATION allows whatever the grants", func(t *testing.T) {
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(context.Background())
		agent, err := pgx.Connect(ctx, agentURL)
		if err != nil {
			t.Fatal(err)
		}
		defer agent.Close(context.Background())
		for _, sql := range []string{
			`CREATE TABLE public.not_for_the_agent (secret text)`,
			`SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')`,
		} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if _, err := agent.Exec(ctx, `SELECT * FROM public.not_for_the_agent`); !isInsufficientPrivilege(err) {
			t.Fatalf("agent reads the table: %v, want permission denied", err)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_create_logical_replication_slot('agent_peeks', 'test_decoding')`); err != nil {
			t.Fatalf("agent creates a test_decoding slot: %v", err)
		}
		if _, err := admin.Exec(ctx, `INSERT INTO public.not_for_the_agent VALUES ('s3cret')`); err != nil {
			t.Fatal(err)
		}
		// The test server commits asynchronously: the decoding shows the
		// row once the WAL writer has flushed it.
		var changes string
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(changes, "s3cret"); {
			var more string
			if err := agent.QueryRow(ctx, `SELECT coalesce(string_agg(data, E'\n'), '') FROM pg_logical_slot_get_changes('agent_peeks', NULL, NULL)`).Scan(&more); err != nil {
				t.Fatalf("agent decodes: %v", err)
			}
			changes += more
			if time.Now().After(deadline) {
				t.Fatalf("the agent's decoding lacks the row after 20s: %q", changes)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_drop_replication_slot('someone_elses')`); err != nil {
			t.Errorf("agent drops another consumer's slot: %v", err)
		}
		if _, err := agent.Exec(ctx, `SELECT pg_drop_replication_slot('agent_peeks')`); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLeastPrivilege: lenkwerk_agent (certificate, verify-full) reads the
// Lenkwerk tables and cannot change them; a pgkv consumer in
// lenkwerk_kv_reader (scram-sha-256 over verify-full, the password from
// PGPASSFILE, none in the URL) can List and Watch and cannot Put or
// Delete.
func TestLeastPrivilege(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := newPKI(t)
	pg := startPG(t, p)

	t.Run("agent", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, pg.url(agentRole, p.agent))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM storage.config`).Scan(&n); err != nil {
			t.Errorf("agent cannot read storage.config: %v", err)
		}
		for _, sql := range []string{
			`INSERT INTO storage.config (key, value) VALUES ('x', '1')`,
			`UPDATE storage.config SET value = '2'`,
			`DELETE FROM storage.config`,
			`CREATE TABLE storage.evil (x int)`,
			`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.config`,
		} {
			if _, err := conn.Exec(ctx, sql); !isInsufficientPrivilege(err) {
				t.Errorf("%s as %s: %v, want insufficient privilege (42501) or must be owner", sql, agentRole, err)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, `CREATE ROLE `+operatorRole+` LOGIN IN ROLE lenkwerk_config`); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, pg.url(operatorRole, p.operator))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `INSERT INTO storage.config (key, value) VALUES ('by_operator', '1')`); err != nil {
			t.Errorf("%s (lenkwerk_config) cannot write storage.config: %v", operatorRole, err)
		}
		for _, sql := range []string{
			`DELETE FROM storage.servermap`, // generations are only ever inserted
			`CREATE TABLE storage.evil (x int)`,
			`DROP TABLE storage.config`,
			`ALTER TABLE storage.config ADD COLUMN evil int`,
			`ALTER PUBLICATION bagger_lw_storage DROP TABLE storage.config`,
			`SELECT pg_drop_replication_slot('lw_agent')`,
		} {
			if _, err := conn.Exec(ctx, sql); !isInsufficientPrivilege(err) {
				t.Errorf("%s as %s (lenkwerk_config): %v, want insufficient privilege (42501)", sql, operatorRole, err)
			}
		}
	})

	t.Run("pgkv reader", func(t *testing.T) {
		// The store's owner (here the superuser) creates the schema and
		// the lenkwerk_kv_reader role; a consumer logs in as a member.
		owner, err := kvdriver.Open(ctx, pg.url("postgres", p.postgres, "schema", "lenkwerk_kv"))
		if err != nil {
			t.Fatal(err)
		}
		defer owner.Close()
		if _, err := owner.Put(ctx, "/Config/a", []byte(`"a"`)); err != nil {
			t.Fatal(err)
		}
		admin, err := pgx.Connect(ctx, pg.url("postgres", p.postgres))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE lenkwerk_kv_reader`, readerUser, readerPass)); err != nil {
			t.Fatal(err)
		}
		passFile := filepath.Join(t.TempDir(), "pgpass")
		line := fmt.Sprintf("127.0.0.1:%d:%s:%s:%s\n", pg.c.Port(), pg.name, readerUser, readerPass)
		if err := os.WriteFile(passFile, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PGPASSFILE", passFile)
		t.Setenv("PGPASSWORD", "")
		readerURL := pg.url(readerUser, certs.Pair{}, "schema", "lenkwerk_kv", "migrate", "false")
		if strings.Contains(readerURL, readerPass) {
			t.Fatal("the reader URL holds the password")
		}
		reader, err := kvdriver.Open(ctx, readerURL)
		if err != nil {
			t.Fatalf("open pgkv as %s (password from PGPASSFILE): %v", readerUser, err)
		}
		defer reader.Close()
		kvs, rev, err := reader.List(ctx, "/Config")
		if err != nil || len(kvs) != 1 {
			t.Fatalf("reader List = %v, %v", kvs, err)
		}
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := reader.Watch(wctx, "/Config", rev)
		if _, err := owner.Put(ctx, "/Config/b", []byte(`"b"`)); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-wch:
			if r.Err != nil || len(r.Events) == 0 || r.Events[0].Key != "/Config/b" {
				t.Fatalf("reader watch: %+v", r)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("reader watch saw no change within 20s")
		}
		if _, err := reader.Put(ctx, "/Config/c", []byte(`"c"`)); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("reader Put: %v, want permission denied", err)
		}
		if _, err := reader.Delete(ctx, "/Config/a"); err == nil {
			t.Error("reader Delete succeeded")
		}

		// Without the password file the reader is refused: the password
		// came from there, and nothing weaker than scram over TLS works.
		t.Setenv("PGPASSFILE", filepath.Join(t.TempDir(), "none"))
		if s, err := kvdriver.Open(ctx, readerURL); err == nil {
			s.Close()
			t.Error("reader opened without a password")
		}
	})
}

// isInsufficientPrivilege reports SQLSTATE 42501 (insufficient privilege,
// also "must be owner").
func isInsufficientPrivilege(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42501"
}
