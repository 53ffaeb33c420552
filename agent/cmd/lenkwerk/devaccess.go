package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/jackc/pgx/v5"
)

// devConfigLogin is the login role of dev's lenkwerk_config URL: a member
// of lenkwerk_config and nothing else (as a deployment grants the role to
// its operators' login roles), so the URL has exactly the role's
// privileges, even after RESET ROLE or SET ROLE.
const devConfigLogin = "lenkwerk_config_login"

// devServerOptions make dev's server answer only its user: passwords
// (SCRAM) on every TCP connection, replication too, and a socket only
// the server's OS user can open (the cluster directory is private as
// well). With trust, any local user could connect as the superuser and run
// COPY … TO PROGRAM as the server's OS user. Settings apply when the
// cluster is created (a kept --dir keeps its own; see warnIfTrusting).
func devServerOptions(dir string, port int) devstack.Options {
	return devstack.Options{
		Dir:  dir,
		Port: port,
		HBA: []string{
			"host all all 127.0.0.1/32 scram-sha-256",
			"host replication all 127.0.0.1/32 scram-sha-256",
		},
		Settings: map[string]string{"unix_socket_permissions": "0700"},
	}
}

// devAccess holds one dev run's passwords, new at every start.
type devAccess struct {
	pg        *devstack.Cluster
	passwords map[string]string // role → password
	passFile  string
}

func newPassword() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// setSuperuserPassword gives postgres a new password, through the socket
// (open to the server's OS user only), and starts the run's devAccess.
func setSuperuserPassword(ctx context.Context, pg *devstack.Cluster, root string) (*devAccess, error) {
	a := &devAccess{pg: pg, passwords: map[string]string{}, passFile: filepath.Join(root, "pgpass")}
	socket := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", pg.SocketDir(), pg.Port())
	if err := a.setPassword(ctx, socket, "postgres", ""); err != nil {
		return nil, err
	}
	return a, nil
}

// setRoles gives lenkwerk_agent and devConfigLogin (created if missing)
// new passwords, and writes the password file.
func (a *devAccess) setRoles(ctx context.Context) error {
	admin := a.url(devDatabase, "postgres")
	if err := a.setPassword(ctx, admin, "lenkwerk_agent", ""); err != nil {
		return err
	}
	if err := a.setPassword(ctx, admin, devConfigLogin, "lenkwerk_config"); err != nil {
		return err
	}
	return a.writePassFile()
}

// setPassword sets role's password (creating it, a LOGIN member of
// memberOf, when memberOf is given and it is missing) over conninfo.
func (a *devAccess) setPassword(ctx context.Context, conninfo, role, memberOf string) error {
	conn, err := pgx.Connect(ctx, conninfo)
	if err != nil {
		return fmt.Errorf("set the password of %s: %w", role, err)
	}
	defer conn.Close(context.Background())
	pw := newPassword() // hex: safe inside a literal
	ident := pgx.Identifier{role}.Sanitize()
	if memberOf != "" {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil {
			return fmt.Errorf("look up role %s: %w", role, err)
		}
		if !exists {
			if _, err := conn.Exec(ctx, "CREATE ROLE "+ident+" LOGIN IN ROLE "+pgx.Identifier{memberOf}.Sanitize()); err != nil {
				return fmt.Errorf("create role %s: %w", role, err)
			}
		}
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE "+ident+" LOGIN PASSWORD '"+pw+"'"); err != nil {
		return fmt.Errorf("set the password of %s: %w", role, err)
	}
	a.passwords[role] = pw
	return nil
}

// url is pg.URL for role with its password: for this process only, never
// printed.
func (a *devAccess) url(db, role string) string {
	u, err := url.Parse(a.pg.URL(db, role))
	if err != nil {
		return a.pg.URL(db, role)
	}
	u.User = url.UserPassword(role, a.passwords[role])
	return u.String()
}

// writePassFile writes the passwords as a libpq password file (mode 0600),
// which psql and lenkwerk read through PGPASSFILE: the printed URLs and
// commands hold no password.
func (a *devAccess) writePassFile() error {
	var b strings.Builder
	for _, role := range []string{"postgres", "lenkwerk_agent", devConfigLogin} {
		fmt.Fprintf(&b, "127.0.0.1:%d:*:%s:%s\n", a.pg.Port(), role, a.passwords[role])
	}
	if err := os.Remove(a.passFile); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("password file: %w", err)
	}
	f, err := os.OpenFile(a.passFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("password file: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("password file: %w", err)
	}
	return f.Close()
}

// warnIfTrusting warns when the server lets a TCP connection in without a
// password: a --dir created by an older lenkwerk dev, with trust.
func (a *devAccess) warnIfTrusting(ctx context.Context) {
	cfg, err := pgx.ParseConfig(a.pg.URL(devDatabase, "postgres"))
	if err != nil {
		return
	}
	cfg.Password = "" // not even from a password file
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return
	}
	conn.Close(context.Background())
	fmt.Fprintf(os.Stderr, "lenkwerk dev: WARNING: this server lets every TCP connection in without a password (a --dir made by an older lenkwerk dev): any local user can act as its superuser; remove %s to start over with passwords\n", filepath.Dir(a.pg.DataDir()))
}
