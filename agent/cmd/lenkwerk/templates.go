package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/kvdriver/backoff"
	"github.com/jackc/pgx/v5"
)

// checkTemplates checks the tables of the --key-template flags (given,
// compiled in m) against the Lenkwerk database's catalog before the agent
// starts, so that a typo ends the command with an error instead of a
// session that fails and reconnects for ever:
//   - a table that does not exist, or is not a table, is an error;
//   - a key column the table does not have (or that the publication's
//     column list leaves out) is an error;
//   - a table that exists but is not in the publication is a warning: an
//     operator may set the template up before adding the table to the
//     publication (the running agent copies a table added later, under
//     its template), and its keys are then written as configured from the
//     first row.
//
// An unreachable database is waited for, as the agent would; checkTemplates
// returns nil when ctx ends first.
func checkTemplates(ctx context.Context, databaseURL, publication string, m *keymap.Mapper, given map[string]string) error {
	if len(given) == 0 {
		return nil
	}
	conn, err := connectRetry(ctx, databaseURL)
	if err != nil {
		if ctx.Err() != nil {
			return nil // the command stops
		}
		return err
	}
	defer conn.Close(context.Background())
	var pubExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $1)`, publication).Scan(&pubExists); err != nil {
		return fmt.Errorf("check --key-template: %w", err)
	}
	byTable := map[string]*keymap.Template{}
	for _, t := range m.Templates() {
		byTable[t.Table()] = t
	}
	names := make([]string, 0, len(given))
	for name := range given {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		tmpl := byTable[name]
		schema, table, _ := strings.Cut(name, ".")
		var (
			kind      string
			cols      []string
			published bool
			pubCols   []string
		)
		// to_jsonb(pt) -> 'attnames': the publication's column list
		// (PostgreSQL 15+; NULL before, or without a list).
		err := conn.QueryRow(ctx, `SELECT c.relkind::text,
				ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
				pt.schemaname IS NOT NULL,
				ARRAY(SELECT jsonb_array_elements_text(coalesce(to_jsonb(pt.*) -> 'attnames', '[]')))
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = $3 AND pt.schemaname = n.nspname AND pt.tablename = c.relname
			WHERE n.nspname = $1 AND c.relname = $2`, schema, table, publication).Scan(&kind, &cols, &published, &pubCols)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			errs = append(errs, fmt.Errorf("--key-template %s=%s: table %s does not exist", name, tmpl, name))
			continue
		case err != nil:
			return fmt.Errorf("check --key-template %s: %w", name, err)
		case kind != "r" && kind != "p":
			errs = append(errs, fmt.Errorf("--key-template %s=%s: %s is not a table (relkind %s)", name, tmpl, name, kind))
			continue
		}
		for _, c := range tmpl.Columns() {
			switch {
			case !slices.Contains(cols, c):
				errs = append(errs, fmt.Errorf("--key-template %s=%s: table %s has no column %q", name, tmpl, name, c))
			case published && len(pubCols) > 0 && !slices.Contains(pubCols, c):
				errs = append(errs, fmt.Errorf("--key-template %s=%s: column %q is not in publication %s's column list", name, tmpl, c, publication))
			}
		}
		if pubExists && !published {
			slog.Warn(fmt.Sprintf("--key-template: table %s is not in publication %s: its rows are mirrored once it is added (ALTER PUBLICATION %s ADD TABLE %s)", name, publication, publication, name))
		}
	}
	return errors.Join(errs...)
}

// connectRetry connects to databaseURL, retrying with capped backoff
// until ctx ends.
func connectRetry(ctx context.Context, databaseURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid database URL: %w", err)
	}
	bo := retryBackoff()
	for {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		d := bo.Next()
		slog.Warn("cannot connect to the database to check the key templates; retrying", "retry_in", d, "err", err)
		if !backoff.Sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}
