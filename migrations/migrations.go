package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"sync"

	"github.com/golang-migrate/migrate/v4/database"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers pgx5://
	"github.com/golang-migrate/migrate/v4/source"
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
	// RoleSetting is "copy" for a local copy (Options.Copy): migrations 1,
	// 6 and 7 then skip the wal_level check, the publication and the slot.
	RoleSetting = "lenkwerk.role"
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
	// Copy provisions a local copy of the Lenkwerk tables, as `lenkwerk
	// follow` keeps on storage nodes: the same schema, functions and roles,
	// but no publication and no slot, so any wal_level will do; it gets
	// lenkwerk.follow_state instead. Set through RoleSetting; the database
	// records it, and a source cannot be migrated as a copy or back.
	Copy bool
	// Log, when set, is told of each migration applied, e.g.
	// "3/u storage_schema".
	Log func(msg string)
	// Note, when set, is told of what Adopt does besides migrations: the
	// rows it kept, a slot it replaced, roles that need lenkwerk_config.
	Note func(msg string)
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
	if o.Copy && (o.Slot != "" || o.Publication != "") {
		return errors.New("a local copy has no publication or slot: do not name them")
	}
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
	err = withMigrate(ctx, databaseURL, Options{}, serverCheck{}, func(r *runner) error {
		m := r.m
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
	return withMigrate(ctx, databaseURL, Options{}, serverCheck{}, func(r *runner) error {
		m := r.m
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
