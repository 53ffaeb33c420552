package migrations

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers pgx5://
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed *.sql
var files embed.FS

// Defaults for Options.Publication and Options.Slot, as in Bagger.
const (
	DefaultPublication = "bagger_lw_storage"
	DefaultSlot        = "lw_agent"
)

// The custom settings the migration SQL reads the names from.
const (
	PublicationSetting = "lenkwerk.publication_name"
	SlotSetting        = "lenkwerk.slot_name"
)

var (
	// ErrWalLevel reports a server without wal_level=logical; nothing was
	// changed.
	ErrWalLevel = errors.New("wal_level is not logical")
	// ErrDirty reports a database whose last migration failed.
	ErrDirty = errors.New("database version is dirty")
)

// Options configure a migration run.
type Options struct {
	// Publication names the publication; empty: the name recorded in the
	// database, else the lenkwerk.publication_name setting, else
	// DefaultPublication.
	Publication string
	// Slot names the replication slot, resolved like Publication
	// (DefaultSlot).
	Slot string
	// Log, when set, is told of each migration applied, e.g.
	// "3/u storage_schema".
	Log func(msg string)
}

// Slot names are what PostgreSQL allows; publication names are held to
// plain identifiers as well, since golang-migrate's driver re-encodes URL
// query values in a way PostgreSQL URLs do not decode (a space arrives as
// "+"). Migration 6 checks the same.
var (
	slotName        = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	publicationName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

func (o Options) validate() error {
	if o.Slot != "" && !slotName.MatchString(o.Slot) {
		return fmt.Errorf("invalid slot name %q: use lower case letters, digits and _, at most 63", o.Slot)
	}
	if o.Publication != "" && !publicationName.MatchString(o.Publication) {
		return fmt.Errorf("invalid publication name %q: use lower case letters, digits and _ (not first), at most 63", o.Publication)
	}
	return nil
}

// FS returns the migration files (the *.sql of this directory).
func FS() fs.FS { return files }

// Versions returns the versions of the embedded migrations, ascending.
func Versions() []uint {
	versionsOnce.Do(func() {
		entries, err := fs.ReadDir(files, ".")
		if err != nil {
			panic("migrations: read embedded files: " + err.Error())
		}
		seen := map[uint]bool{}
		for _, e := range entries {
			m, err := source.DefaultParse(e.Name())
			if err != nil {
				panic("migrations: bad migration file name " + e.Name())
			}
			if !seen[m.Version] {
				seen[m.Version] = true
				versions = append(versions, m.Version)
			}
		}
		sort.Slice(versions, func(i, j int) bool { return versions[i] < versions[j] })
	})
	return append([]uint(nil), versions...)
}

var (
	versionsOnce sync.Once
	versions     []uint
)

// prev returns the version before v (0 for the first).
func prev(v uint) uint {
	var p uint
	for _, x := range Versions() {
		if x >= v {
			break
		}
		p = x
	}
	return p
}

// next returns the version after v (v itself when it is the last).
func next(v uint) uint {
	for _, x := range Versions() {
		if x > v {
			return x
		}
	}
	return v
}

// Up applies every migration not yet applied. It fails with ErrWalLevel,
// changing nothing, on a server without wal_level=logical.
func Up(ctx context.Context, databaseURL string, opts Options) error {
	latest := Versions()[len(Versions())-1]
	return migrateTo(ctx, databaseURL, opts, true, func(uint) (uint, error) { return latest, nil })
}

// Down reverts the last n applied migrations, or all of them when n is 0,
// which drops schema storage with all its data, the publication and the
// slot (the roles stay).
func Down(ctx context.Context, databaseURL string, n int, opts Options) error {
	if n < 0 {
		return fmt.Errorf("migrate down: invalid number of migrations %d", n)
	}
	return migrateTo(ctx, databaseURL, opts, false, func(cur uint) (uint, error) {
		if n == 0 {
			return 0, nil
		}
		target := cur
		for i := 0; i < n; i++ {
			if target == 0 {
				return 0, fmt.Errorf("migrate down %d: only %d migrations are applied (nothing was changed)", n, i)
			}
			target = prev(target)
		}
		return target, nil
	})
}

// Goto migrates up or down to version (0: no migration applied).
func Goto(ctx context.Context, databaseURL string, version uint, opts Options) error {
	if err := known(version); err != nil {
		return fmt.Errorf("migrate goto: %w", err)
	}
	// Every version above 0 needs wal_level=logical (a server with the slot
	// of version 7 does not even start with another wal_level), so the check
	// cannot block a way down that exists.
	return migrateTo(ctx, databaseURL, opts, version > 0, func(uint) (uint, error) { return version, nil })
}

// Version returns the version the database is at (0: none applied) and
// whether its last migration failed (dirty).
func Version(ctx context.Context, databaseURL string) (version uint, dirty bool, err error) {
	err = withMigrate(ctx, databaseURL, Options{}, false, func(m *migrate.Migrate, _ *progress, _ func(func() error) error) error {
		version, dirty, err = currentVersion(m)
		return err
	})
	return version, dirty, err
}

// Force records version (0: none) as applied and clean without running any
// migration: the way out of a dirty version once its cause is fixed.
func Force(ctx context.Context, databaseURL string, version uint) error {
	if err := known(version); err != nil {
		return fmt.Errorf("migrate force: %w", err)
	}
	return withMigrate(ctx, databaseURL, Options{}, false, func(m *migrate.Migrate, _ *progress, _ func(func() error) error) error {
		if version == 0 {
			return m.Force(database.NilVersion)
		}
		return m.Force(int(version))
	})
}

func known(version uint) error {
	if version == 0 {
		return nil
	}
	vs := Versions()
	for _, v := range vs {
		if v == version {
			return nil
		}
	}
	return fmt.Errorf("no migration has version %d (known: 0 for none, %d to %d)", version, vs[0], vs[len(vs)-1])
}

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
// at a time. Between migrations it honours ctx; during one it cancels the
// running statement, so that even a slot creation waiting for other
// transactions stops (the migration then rolls back and the version is
// marked dirty, as the error explains). golang-migrate's GracefulStop is
// not used: its flag is shared between goroutines without synchronisation.
func migrateTo(ctx context.Context, databaseURL string, opts Options, needLogical bool, target func(cur uint) (uint, error)) error {
	return withMigrate(ctx, databaseURL, opts, needLogical, func(m *migrate.Migrate, log *progress, cancellable func(func() error) error) error {
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
			if err := cancellable(func() error { return m.Steps(step) }); err != nil {
				err = explain(err, log.last())
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
	})
}

// withMigrate opens golang-migrate on the embedded files and databaseURL
// and runs do with it, keeping the password out of any error. needLogical
// checks wal_level first. do gets cancellable, which runs a golang-migrate
// call (which has no context) and cancels its statement when ctx ends.
func withMigrate(ctx context.Context, databaseURL string, opts Options, needLogical bool,
	do func(m *migrate.Migrate, log *progress, cancellable func(func() error) error) error) (err error) {
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
	if needLogical || opts.Slot != "" || opts.Publication != "" {
		if err := checkServer(ctx, pgURL, needLogical, opts); err != nil {
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
	return do(m, log, cancellable)
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
// table, a server without wal_level=logical (when needLogical) and names in
// opts that differ from those the database recorded (the migrations would
// refuse them halfway, leaving a dirty version).
func checkServer(ctx context.Context, pgURL string, needLogical bool, opts Options) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", kvdriver.Redact(pgURL), err)
	}
	defer conn.Close(context.Background())
	if needLogical {
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
	recorded, err := Names(ctx, conn)
	if err != nil || recorded == nil {
		return err
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

// Provisioned holds the names a database was provisioned with.
type Provisioned struct {
	Publication string
	Slot        string
}

// Names returns the publication and slot names recorded in the database
// conn is connected to, or nil when it has not been migrated that far.
func Names(ctx context.Context, conn *pgx.Conn) (*Provisioned, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('lenkwerk.setting') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for lenkwerk.setting: %w", err)
	}
	if !exists {
		return nil, nil
	}
	var p Provisioned
	err := conn.QueryRow(ctx, `SELECT
		coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'publication_name'), ''),
		coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'slot_name'), '')`).Scan(&p.Publication, &p.Slot)
	if err != nil {
		return nil, fmt.Errorf("read lenkwerk.setting: %w", err)
	}
	return &p, nil
}

// explain turns golang-migrate's errors into messages that say what failed
// and how to get out of a dirty version; last is the migration that ran
// last ("3/u storage_schema").
func explain(err error, last string) error {
	if err == nil || errors.Is(err, migrate.ErrNoChange) {
		return nil
	}
	var dirty migrate.ErrDirty
	if errors.As(err, &dirty) {
		return fmt.Errorf("%w: %s", ErrDirty, DirtyAdvice(uint(max(dirty.Version, 0))))
	}
	var dbErr database.Error
	if errors.As(err, &dbErr) && last != "" {
		var version uint
		var dir string
		fmt.Sscanf(last, "%d/%s", &version, &dir)
		force := prev(version)
		if dir == "d" {
			force = version
		}
		msg := dbErr.Err
		if msg == "" && dbErr.OrigErr != nil {
			msg = dbErr.OrigErr.Error()
		}
		if dbErr.Line > 0 {
			msg += fmt.Sprintf(" (line %d)", dbErr.Line)
		}
		var pgErr *pgconn.PgError
		if errors.As(dbErr.OrigErr, &pgErr) && pgErr.Hint != "" {
			msg += "\nHINT: " + pgErr.Hint
		}
		return fmt.Errorf("migration %s: %s\nNothing of this migration was applied (it is one transaction), but the "+
			"version is marked dirty: once the cause is fixed run 'lenkwerk migrate force %d', then migrate again: %w",
			last, msg, force, dbErr.OrigErr)
	}
	return err
}

// DirtyAdvice explains a version marked dirty and how to get out of it.
func DirtyAdvice(version uint) string {
	return fmt.Sprintf("the database is at version %d, marked dirty because a migration failed. "+
		"Each migration runs in one transaction, so the failed one changed nothing: fix its cause, then run "+
		"'lenkwerk migrate force %d' if it failed going up (or 'lenkwerk migrate force %d' if going down) and migrate again",
		version, prev(version), next(version))
}

// progress collects golang-migrate's log to know the migration running.
type progress struct {
	log     func(string)
	mu      sync.Mutex
	current string
}

func (p *progress) Printf(format string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	if s, ok := strings.CutPrefix(msg, "Read and execute "); ok {
		p.mu.Lock()
		p.current = s
		p.mu.Unlock()
		return
	}
	if s, ok := strings.CutPrefix(msg, "Finished "); ok && p.log != nil {
		if i := strings.LastIndex(s, " (read"); i > 0 {
			s = s[:i]
		}
		p.log(s)
	}
}

func (p *progress) Verbose() bool { return true }

func (p *progress) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// convertURL accepts postgres://, postgresql:// and pgx5:// URLs and returns
// one for pgx (without golang-migrate's x- options) and one for
// golang-migrate's pgx5 driver, both carrying the name settings of opts, and
// the password to keep out of errors.
func convertURL(raw string, opts Options) (pgURL, migrateURL, password string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" && u.Path == "" {
		return "", "", "", errors.New("invalid database URL: want postgres://user@host:port/database")
	}
	password, _ = u.User.Password()
	switch u.Scheme {
	case "postgres", "postgresql", "pgx5":
	default:
		return "", "", password, fmt.Errorf("unsupported database URL scheme %q: want postgres://user@host:port/database", u.Scheme)
	}
	q := u.Query()
	if opts.Publication != "" {
		q.Set(PublicationSetting, opts.Publication)
	}
	if opts.Slot != "" {
		q.Set(SlotSetting, opts.Slot)
	}
	u.RawQuery = q.Encode()
	u.Scheme = "pgx5"
	migrateURL = u.String()
	u.Scheme = "postgres"
	pgURL = migrate.FilterCustomQuery(u).String()
	return pgURL, migrateURL, password, nil
}

// scrub keeps the password out of err's text, whatever layer put it there.
func scrub(err error, password string) error {
	if err == nil || password == "" {
		return err
	}
	msg := err.Error()
	clean := msg
	for _, p := range []string{password, url.QueryEscape(password), url.PathEscape(password)} {
		clean = strings.ReplaceAll(clean, p, "xxxxx")
	}
	if clean == msg {
		return err
	}
	return scrubbed{msg: clean, err: err}
}

// scrubbed is an error whose text had a password removed. It answers
// errors.Is for the original but does not unwrap to it, which would hand
// the password back.
type scrubbed struct {
	msg string
	err error
}

func (e scrubbed) Error() string        { return e.msg }
func (e scrubbed) Is(target error) bool { return errors.Is(e.err, target) }
