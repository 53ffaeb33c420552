package pgkv

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// SchemaVersion is the migration version this driver needs.
var SchemaVersion = mustLatestVersion()

func mustLatestVersion() uint {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		panic(err)
	}
	var latest uint
	for _, e := range entries {
		head, _, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(head, 10, 32)
		if err != nil {
			panic(fmt.Sprintf("pgkv: migration %s: bad version", e.Name()))
		}
		latest = max(latest, uint(v))
	}
	return latest
}

// Migrate brings the schema named in c up to SchemaVersion: it creates the
// schema if missing and applies the embedded migrations, recording them in
// the schema's own table pgkv_schema_migrations (never Lenkwerk's
// schema_migrations). A schema already at SchemaVersion is left alone
// without taking the migration lock, so read-only roles can Open with
// migrations on.
func Migrate(ctx context.Context, c Config) error {
	if err := ValidateSchema(c.Schema); err != nil {
		return err
	}
	// pgxpool's parser, so pool_* parameters are understood, not sent.
	pc, err := pgxpool.ParseConfig(c.ConnString)
	if err != nil {
		return fmt.Errorf("pgkv migrate: %w", err)
	}
	cc := pc.ConnConfig
	// Unqualified names in the migrations resolve to the schema, and
	// kv_apply captures it with SET search_path FROM CURRENT.
	// Set by SQL, not as a startup parameter, which proxies such as
	// pgbouncer refuse.
	if cc.RuntimeParams["application_name"] == "" {
		cc.RuntimeParams["application_name"] = defaultApplicationName
	}
	db := stdlib.OpenDB(*cc, stdlib.OptionAfterConnect(func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SET search_path TO "+pgx.Identifier{c.Schema}.Sanitize())
		return err
	}))
	defer db.Close()

	version, dirty, found, err := currentVersion(ctx, db, c.Schema)
	if err != nil {
		return err
	}
	// Dirty without the migration lock may be another Open's migration in
	// progress (golang-migrate marks the version dirty while it runs):
	// only m.Up, under the lock, can tell a failed migration from a running
	// one.
	switch {
	case found && dirty:
	case found && version == SchemaVersion:
		return nil
	case found && version > SchemaVersion:
		return fmt.Errorf("pgkv migrate: schema %q is at version %d, newer than this driver's %d: upgrade the driver", c.Schema, version, SchemaVersion)
	}
	if err := createSchema(ctx, db, c.Schema); err != nil {
		return err
	}

	src, err := iofs.New(migrationFS, "migrations")
	if err != nil {
		return fmt.Errorf("pgkv migrate: open embedded migrations: %w", err)
	}
	drv, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{SchemaName: c.Schema, MigrationsTable: migrationsTable})
	if err != nil {
		return fmt.Errorf("pgkv migrate: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		return fmt.Errorf("pgkv migrate: %w", err)
	}
	defer m.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			m.GracefulStop <- true
		case <-done:
		}
	}()
	err = m.Up()
	var dirtyErr migrate.ErrDirty
	switch {
	case err == nil || errors.Is(err, migrate.ErrNoChange):
		return nil
	case errors.As(err, &dirtyErr):
		return fmt.Errorf("pgkv migrate: schema %q is dirty at version %d (a migration failed halfway): repair it by hand, then record the version with `migrate force`", c.Schema, dirtyErr.Version)
	default:
		return fmt.Errorf("pgkv migrate schema %q: %w (if the version is now dirty, repair by hand and `migrate force` it)", c.Schema, err)
	}
}

// currentVersion reads the schema's migration table, if there is one.
func currentVersion(ctx context.Context, db *sql.DB, schema string) (version uint, dirty, found bool, err error) {
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{schema, migrationsTable}.Sanitize()).Scan(&exists); err != nil {
		return 0, false, false, fmt.Errorf("pgkv migrate: look for %s.%s: %w", schema, migrationsTable, err)
	}
	if !exists {
		return 0, false, false, nil
	}
	var v int64
	err = db.QueryRowContext(ctx, `SELECT version, dirty FROM `+pgx.Identifier{schema, migrationsTable}.Sanitize()+` LIMIT 1`).Scan(&v, &dirty)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, false, nil
	}
	if err != nil {
		return 0, false, false, fmt.Errorf("pgkv migrate: read schema version: %w", err)
	}
	return uint(v), dirty, true, nil
}

// createSchema creates the schema unless it exists; checking first keeps
// roles without CREATE on the database working when it does.
func createSchema(ctx context.Context, db *sql.DB, schema string) error {
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil {
		return fmt.Errorf("pgkv migrate: look for schema %q: %w", schema, err)
	}
	if exists {
		return nil
	}
	_, err := db.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.DuplicateSchema || pgErr.Code == pgerrcode.UniqueViolation) {
		return nil // created concurrently by another Open
	}
	if err != nil {
		return fmt.Errorf("pgkv migrate: create schema %q: %w", schema, err)
	}
	return nil
}
