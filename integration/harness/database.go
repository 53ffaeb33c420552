package harness

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/migrations"
)

// createDatabase creates the Lenkwerk database on the server of serverURL
// (a superuser URL of any database) unless it exists.
func createDatabase(ctx context.Context, serverURL string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", Database).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", Database, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{Database}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", Database, err)
		}
	}
	return nil
}

// migrate migrates the Lenkwerk database at adminURL in the test process.
func migrate(ctx context.Context, adminURL string) error {
	if err := migrations.Up(ctx, adminURL, migrations.Options{}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// configLogin is the login role of ConfigURL.
const configLogin = "lenkwerk_config_login"

// createConfigLogin creates configLogin, a member of lenkwerk_config and
// nothing else, on the server of adminURL (a superuser URL) unless it
// exists. Roles are cluster-wide: on a shared server another Stack may
// have created it, concurrently too. No password: both backends trust
// every role, as for lenkwerk_agent.
func createConfigLogin(ctx context.Context, adminURL string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `DO $$
BEGIN
    CREATE ROLE `+configLogin+` LOGIN IN ROLE lenkwerk_config;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$`)
	if err != nil {
		return fmt.Errorf("create role %s: %w", configLogin, err)
	}
	return nil
}
