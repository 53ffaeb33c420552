package migrations

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
)

func currentVersion(m *migrate.Migrate) (uint, bool, error) {
	v, dirty, err := m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read version: %w", err)
	}
	return v, dirty, nil
}

// migrateTo moves the database to the version target picks, one migration
// at a time (see runner.migrateTo).
func migrateTo(ctx context.Context, databaseURL string, opts Options, needLogical bool, target func(cur uint) (uint, error)) error {
	return withMigrate(ctx, databaseURL, opts, serverCheck{logical: needLogical}, func(r *runner) error {
		return r.migrateTo(ctx, target)
	})
}

// migrateTo moves the database to the version target picks, one migration
// at a time. Between migrations it honours ctx; during one it cancels the
// running statement, so that even a slot creation waiting for other
// transactions stops (the migration then rolls back and the version is
// marked dirty, as the error explains). golang-migrate's GracefulStop is
// not used: its flag is shared between goroutines without synchronisation.
func (r *runner) migrateTo(ctx context.Context, target func(cur uint) (uint, error)) error {
	m := r.m
	cur, dirty, err := currentVersion(m)
	if err != nil {
		return err
	}
	if dirty {
		return explain(migrate.ErrDirty{Version: int(cur)}, "")
	}
	if err := known(cur); err != nil {
		return fmt.Errorf("the database is at version %d, which this lenkwerk does not know (a newer one migrated it?)", cur)
	}
	want, err := target(cur)
	if err != nil {
		return err
	}
	if want < slotVersion && cur >= slotVersion {
		if err := checkSlotIdle(ctx, r.pgURL); err != nil {
			return err
		}
	}
	for {
		if cur == want {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stopped at version %d before all migrations ran: %w", cur, err)
		}
		step := 1
		if want < cur {
			step = -1
		}
		if step == 1 && next(cur) == slotVersion {
			// An adopted database may still have Bagger's agent's slot
			// under the name of the one migration 7 creates.
			if err := replaceBaggerSlot(ctx, r.pgURL, r.note); err != nil {
				return err
			}
		}
		r.log.reset()
		if err := r.cancellable(func() error { return m.Steps(step) }); err != nil {
			err = explain(err, r.log.last())
			if ctx.Err() != nil {
				err = fmt.Errorf("%w: %w", ctx.Err(), err)
			}
			return err
		}
		// Read back rather than count: another migrator may have moved it.
		if cur, dirty, err = currentVersion(m); err != nil {
			return err
		}
		if dirty {
			return explain(migrate.ErrDirty{Version: int(cur)}, "")
		}
	}
}

// serverCheck says what withMigrate checks before it opens golang-migrate.
type serverCheck struct {
	logical  bool // wal_level = logical
	adopting bool // Adopt: Bagger's extension is expected, not refused
}

// withMigrate opens golang-migrate on the embedded files and databaseURL
// and runs do with it, keeping the password out of any error; check says
// what checkServer checks first. do gets cancellable, which runs a golang-migrate
// call (which has no context) and cancels its statement when ctx ends.
func withMigrate(ctx context.Context, databaseURL string, opts Options, check serverCheck,
	do func(*runner) error) (err error) {
	if err := opts.validate(); err != nil {
		return err
	}
	pgURL, migrateURL, password, err := convertURL(databaseURL, opts)
	if err != nil {
		return err
	}
	defer func() { err = scrub(err, password) }()
	if err := ctx.Err(); err != nil {
		return err
	}
	// A copy has no slot: any wal_level will do.
	check.logical = check.logical && !opts.Copy
	if check.logical || check.adopting || opts.Copy || opts.Slot != "" || opts.Publication != "" {
		if err := checkServer(ctx, pgURL, check, opts); err != nil {
			return err
		}
	}
	// The migration connection is found by its application_name to cancel
	// its statement.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	appName := "lenkwerk-migrate-" + hex.EncodeToString(rnd[:])
	u, _ := url.Parse(migrateURL)
	q := u.Query()
	q.Set("application_name", appName)
	u.RawQuery = q.Encode()

	src, err := iofs.New(files, ".")
	if err != nil {
		return fmt.Errorf("read embedded migrations: %w", err)
	}
	m, err := openMigrate(ctx, src, u.String())
	if err != nil {
		return fmt.Errorf("open database %s: %w", kvdriver.Redact(databaseURL), err)
	}
	defer m.Close()
	log := &progress{log: opts.Log}
	m.Log = log
	cancellable := func(call func() error) error {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			cancelBackends(pgURL, appName)
			return <-done
		}
	}
	return do(&runner{m: m, log: log, pgURL: pgURL, cancellable: cancellable, notify: opts.Note})
}

// runner is what withMigrate hands its callback.
type runner struct {
	m     *migrate.Migrate
	log   *progress
	pgURL string // for connections of our own
	// cancellable runs a golang-migrate call (which has no context),
	// cancelling its statement when the context ends.
	cancellable func(func() error) error
	notify      func(string) // Options.Note
}

// note tells Options.Note of a step that is not a migration.
func (r *runner) note(msg string) {
	if r.notify != nil {
		r.notify(msg)
	}
}

// applied tells Options.Log of a migration applied outside golang-migrate.
func (r *runner) applied(name string) {
	if r.log.log != nil {
		r.log.log(name)
	}
}

// slotVersion is the migration that creates the replication slot.
const slotVersion = 7

// checkSlotIdle refuses to revert the slot migration while a consumer (the
// agent) streams the slot: migration 7 would refuse too, but only after
// golang-migrate marked the version dirty.
func checkSlotIdle(ctx context.Context, pgURL string) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", kvdriver.Redact(pgURL), err)
	}
	defer conn.Close(context.Background())
	names, err := Names(ctx, conn)
	if err != nil || names == nil {
		return err
	}
	var pid *int32
	err = conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, names.Slot).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look at slot %s: %w", names.Slot, err)
	}
	if pid != nil {
		return fmt.Errorf("replication slot %q is in use by process %d: stop the Lenkwerk agent, then migrate down again (nothing was changed)", names.Slot, *pid)
	}
	return nil
}

// openMigrate opens golang-migrate, giving up (and leaving the attempt to
// finish in the background) when ctx ends first.
func openMigrate(ctx context.Context, src source.Driver, migrateURL string) (*migrate.Migrate, error) {
	type result struct {
		m   *migrate.Migrate
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := migrate.NewWithSourceInstance("iofs", src, migrateURL)
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.m != nil {
				r.m.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// cancelBackends cancels the running statement of the sessions named
// appName, from a connection of its own.
func cancelBackends(pgURL, appName string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return // the statement then runs to its end; nothing else to do
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, appName)
}

// checkServer refuses, before golang-migrate creates even its version
// table, a copy migrated as a source or the other way round (Options.Copy),
// a database where Bagger's extension is installed (unless adopting), a
// server without wal_level=logical (when check.logical) and names in opts
// that differ from those the database recorded (the migrations would refuse
// them halfway, leaving a dirty version).
func checkServer(ctx context.Context, pgURL string, check serverCheck, opts Options) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", kvdriver.Redact(pgURL), err)
	}
	defer conn.Close(context.Background())
	recorded, err := Names(ctx, conn)
	if err != nil {
		return err
	}
	if check.adopting {
		if err := precheckAdopt(ctx, conn, recorded, opts); err != nil {
			return err
		}
	}
	switch {
	case recorded == nil && !check.adopting:
		ext, err := baggerInstalled(ctx, conn)
		if err != nil {
			return err
		}
		if ext != "" {
			how := "'lenkwerk migrate adopt' takes its objects over, keeping every row"
			if opts.Copy {
				how = "'lenkwerk migrate --copy adopt' takes its objects over for lenkwerk follow"
			}
			return fmt.Errorf("%w (version %s) in this database: %s (nothing was changed)", ErrBaggerInstalled, ext, how)
		}
	case recorded == nil:
	case opts.Copy && !recorded.Copy:
		return fmt.Errorf("this database is a Lenkwerk source (publication %q, slot %q), not a local copy: "+
			"refusing to migrate it as a copy (nothing was changed)", recorded.Publication, recorded.Slot)
	case !opts.Copy && recorded.Copy:
		return errors.New("this database is a local copy of Lenkwerk (lenkwerk follow) without publication or slot: " +
			"migrate it as a copy (nothing was changed)")
	}
	if check.logical {
		var level string
		if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
			return fmt.Errorf("read wal_level: %w", err)
		}
		if level != "logical" {
			return fmt.Errorf("%w: the server has wal_level = %s and Lenkwerk's replication slot needs logical; "+
				"as a superuser run ALTER SYSTEM SET wal_level = logical; restart PostgreSQL and migrate again (nothing was changed)",
				ErrWalLevel, level)
		}
	}
	if recorded == nil {
		return nil
	}
	if opts.Publication != "" && opts.Publication != recorded.Publication {
		return fmt.Errorf("this database's publication is %q: --publication %q differs (the names are fixed when the publication is created; nothing was changed)",
			recorded.Publication, opts.Publication)
	}
	if opts.Slot != "" && opts.Slot != recorded.Slot {
		return fmt.Errorf("this database's slot is %q: --slot %q differs (the names are fixed when the publication is created; nothing was changed)",
			recorded.Slot, opts.Slot)
	}
	return nil
}
