package devstack

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// StackOptions configure StartStack.
type StackOptions struct {
	// Postgres configures the PostgreSQL server (wal_level=logical unless
	// Postgres.WalLevel says otherwise).
	Postgres Options
	// Keep makes Close stop PostgreSQL but keep its files, for a
	// Postgres.Dir started again later; by default Close removes them.
	Keep bool
	// Database is created unless it exists (a kept Postgres.Dir has it);
	// "" creates none.
	Database string
	// Provision runs once Database exists, before etcd starts: the
	// migrations (roles, publication, slot) and whatever else the caller's
	// roles need, e.g. passwords. It is the caller's because the
	// migrations' own tests start their servers through this package, which
	// therefore cannot import them.
	Provision func(ctx context.Context, pg *Cluster) error
	// EtcdMembers is how many embedded etcd members to start: none, a
	// single server (Stack.Etcd) or a cluster (Stack.EtcdCluster).
	EtcdMembers int
	// Etcd configures the members; Etcd.Dir holds them (required with
	// EtcdMembers, a member per subdirectory for a cluster).
	Etcd EtcdOptions
}

// Stack is a local Lenkwerk stack: a PostgreSQL server with the Lenkwerk
// database created and provisioned, and embedded etcd. lenkwerk dev, the
// integration harness's local backend and the benchmarks bring theirs up
// with StartStack.
type Stack struct {
	// Postgres is the PostgreSQL server.
	Postgres *Cluster
	// Etcd is the etcd server when StackOptions.EtcdMembers is 1.
	Etcd *EtcdServer
	// EtcdCluster is the etcd cluster when StackOptions.EtcdMembers is
	// more than 1.
	EtcdCluster *EtcdCluster

	database string
	keep     bool
}

// StartStack starts PostgreSQL, creates and provisions the database, then
// starts etcd, and returns once all of it serves. Whatever fails, what was
// started is stopped again. The caller ends the stack with Close; ctx
// bounds only the start.
func StartStack(ctx context.Context, opts StackOptions) (_ *Stack, err error) {
	if opts.EtcdMembers > 0 && opts.Etcd.Dir == "" {
		return nil, errors.New("devstack: StackOptions.Etcd.Dir is required with EtcdMembers")
	}
	s := &Stack{database: opts.Database, keep: opts.Keep}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if s.Postgres, err = Start(ctx, opts.Postgres); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if opts.Database != "" {
		if err := s.CreateDatabase(ctx, opts.Database); err != nil {
			return nil, err
		}
	}
	if opts.Provision != nil {
		if err := opts.Provision(ctx, s.Postgres); err != nil {
			return nil, err
		}
	}
	switch {
	case opts.EtcdMembers == 1:
		s.Etcd, err = StartEtcdServer(ctx, opts.Etcd)
	case opts.EtcdMembers > 1:
		s.EtcdCluster, err = NewEtcdCluster(ctx, opts.Etcd.Dir, opts.EtcdMembers, opts.Etcd)
	}
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	return s, nil
}

// CreateDatabase creates database name unless it exists, as the superuser
// through the server's socket (open to it whatever Options.HBA asks of TCP
// connections).
func (s *Stack) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.Postgres.adminURL())
	if err != nil {
		return fmt.Errorf("create database %s: connect: %w", name, err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// DatabaseURL is the URL of StackOptions.Database as user (the superuser
// "postgres" when user is empty), without a password.
func (s *Stack) DatabaseURL(user string) string { return s.Postgres.URL(s.database, user) }

// EtcdURL is the etcd:// store URL of the stack's etcd, "" without one.
func (s *Stack) EtcdURL() string {
	switch {
	case s.Etcd != nil:
		return s.Etcd.URL()
	case s.EtcdCluster != nil:
		return s.EtcdCluster.URL()
	}
	return ""
}

// Close stops etcd, then PostgreSQL, and removes PostgreSQL's files unless
// StackOptions.Keep. Clients (the agent above all, which must let go of
// its slot) are the caller's to stop first.
func (s *Stack) Close() error {
	var errs []error
	if s.Etcd != nil {
		errs = append(errs, s.Etcd.Close())
	}
	if s.EtcdCluster != nil {
		errs = append(errs, s.EtcdCluster.Close())
	}
	if s.Postgres != nil {
		if s.keep {
			errs = append(errs, s.Postgres.Stop())
		} else {
			errs = append(errs, s.Postgres.Destroy())
		}
	}
	return errors.Join(errs...)
}
