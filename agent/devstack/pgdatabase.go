package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Port is the TCP port the cluster listens on (127.0.0.1).
func (c *Cluster) Port() int {
	if c.extURL != nil {
		p, _ := strconv.Atoi(c.extURL.Port())
		return p
	}
	return c.port
}

// DataDir is the cluster's data directory (empty for an external server).
func (c *Cluster) DataDir() string {
	if c.extURL != nil {
		return ""
	}
	return c.dataDir()
}

// BinDir is the directory of the server binaries (pg_recvlogical, psql…).
func (c *Cluster) BinDir() string { return c.bindir }

// URL returns a connection URL for database db as user (superuser
// "postgres" when user is empty).
func (c *Cluster) URL(db, user string) string {
	if c.extURL != nil {
		u := *c.extURL
		u.Path = "/" + db
		if user != "" {
			u.User = url.User(user)
		}
		return u.String()
	}
	if user == "" {
		user = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(user),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// adminURL is the superuser connection pgtest itself uses: the local
// socket, which Options.HBA cannot close (a cluster that requires TLS and
// client certificates over TCP still creates and drops databases).
func (c *Cluster) adminURL() string {
	if c.extURL != nil {
		return c.URL("postgres", "")
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.dir, c.port)
}

// SocketDir is the directory of the server's Unix socket (empty for an
// external server).
func (c *Cluster) SocketDir() string {
	if c.extURL != nil {
		return ""
	}
	return c.dir
}

// NewDatabase creates a fresh database and returns its superuser URL. The
// database and its replication slots are dropped when the test ends.
func (c *Cluster) NewDatabase(tb TB) string {
	tb.Helper()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "t_" + sanitize(tb.Name()) + "_" + hex.EncodeToString(rnd[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("devstack: postgres: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			tb.Errorf("devstack: postgres: %v", err)
		}
	})
	return c.URL(name, "")
}

// DropDatabase drops database name, first terminating its sessions and
// dropping its replication slots (DROP DATABASE refuses while slots exist).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if !running {
		return nil // the test stopped it; Destroy removes the files
	}
	conn, err := pgx.Connect(ctx, c.adminURL())
	if err != nil {
		return fmt.Errorf("drop database %s: connect: %w", name, err)
	}
	defer conn.Close(ctx)
	// A walsender may hold a slot; terminate sessions until the slots go.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		if qerr := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); qerr != nil {
			return fmt.Errorf("drop database %s: count slots: %w", name, qerr)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop database %s: %d replication slots stay active: %v", name, left, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func (c *Cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.adminURL())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}
