package containers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// Postgres is a PostgreSQL container with wal_level=logical whose database
// Database exists. Host access is by trust (tests only): any role may log
// in without a password, from the host or the network.
type Postgres struct {
	*Container
	Database string
}

// DefaultDatabase is the database a Postgres container creates.
const DefaultDatabase = "lenkwerk"

// StartPostgres runs PostgreSQL on nw as "postgres" and waits until it
// accepts connections.
func StartPostgres(tb testing.TB, nw *Network, img Images) *Postgres {
	tb.Helper()
	c := run(tb, []*Network{nw}, "postgres", img.Postgres,
		testcontainers.WithEnv(map[string]string{
			"POSTGRES_DB":               DefaultDatabase,
			"POSTGRES_HOST_AUTH_METHOD": "trust",
		}),
		// The official image needs wal_level on its command line; ours has
		// it in its configuration too. Short timeouts make a lost agent
		// connection visible to the server soon.
		testcontainers.WithCmd("postgres", "-c", "wal_level=logical", "-c", "max_wal_senders=10", "-c", "max_replication_slots=10",
			"-c", "wal_sender_timeout=10s", "-c", "fsync=off"),
		testcontainers.WithExposedPorts("5432/tcp"),
	)
	p := &Postgres{Container: c, Database: DefaultDatabase}
	if err := p.WaitReady(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return p
}

// URL is the host's URL of database db as user ("" for the superuser
// postgres), on the current host port.
func (p *Postgres) URL(ctx context.Context, db, user string) (string, error) {
	ep, err := p.Endpoint(ctx, "5432/tcp")
	if err != nil {
		return "", err
	}
	return pgURL(ep, db, user), nil
}

// InternalURL is the URL containers on the network use.
func (p *Postgres) InternalURL(db, user string) string {
	return pgURL(p.Name+":5432", db, user)
}

func pgURL(hostPort, db, user string) string {
	if user == "" {
		user = "postgres"
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, hostPort, db)
}

// WaitReady waits until the server answers a query from the host.
func (p *Postgres) WaitReady(ctx context.Context) error {
	return testutil.Poll(ctx, 90*time.Second, "PostgreSQL in "+p.Name+" to accept connections", func(ctx context.Context) (bool, error) {
		u, err := p.URL(ctx, p.Database, "")
		if err != nil {
			return false, err
		}
		var one int
		err = queryRow(ctx, u, "SELECT 1", nil, &one)
		return err == nil, err
	})
}

// probeTimeout bounds one probe of a server: one that does not answer in
// time counts as not ready, and the caller's poll asks again.
const probeTimeout = 5 * time.Second

// queryRow connects to the server of url and scans the row of sql into
// dest, within probeTimeout.
func queryRow(ctx context.Context, url, sql string, args []any, dest ...any) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}
