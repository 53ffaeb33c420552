package migrations

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Bagger's own extension, which Adopt takes over.
const (
	BaggerExtension = "bagger_lw_storage"
	BaggerVersion   = "0.0.1"
	// baggerPlugin is the output plugin of Bagger's agent's slot.
	baggerPlugin = "test_decoding"
	// adoptedSetting, in lenkwerk.setting, records an adoption.
	adoptedSetting = "adopted_from"
)

var (
	// ErrNoBaggerExtension: Adopt found nothing to adopt.
	ErrNoBaggerExtension = errors.New("no Bagger extension " + BaggerExtension + " to adopt")
	// ErrBaggerMismatch: the extension's objects are not those of
	// bagger_lw_storage 0.0.1; nothing was changed.
	ErrBaggerMismatch = errors.New("the Bagger extension found is not the one Lenkwerk adopts")
	// ErrBaggerInstalled: Up or Goto on a database holding Bagger's
	// extension, which Adopt takes over; nothing was changed.
	ErrBaggerInstalled = errors.New("the Bagger extension " + BaggerExtension + " is installed")
	// ErrSlotInUse: Bagger's agent streams its slot, which Lenkwerk's
	// replaces; stop it and run Adopt (or Up) again.
	ErrSlotInUse = errors.New("replication slot in use")
)

var (
	//go:embed adopt/describe.sql
	describeSQL string
	//go:embed adopt/bagger_lw_storage--0.0.1.facts
	expectedFacts string
)

// baggerTables are the tables whose rows Adopt keeps, parents first.
var baggerTables = []string{"postgres_instance", "servermap", "dimension", "index", "index_field", "config"}

// Adopt takes over a database where Bagger's own extension bagger_lw_storage
// 0.0.1 is installed, keeping every row: see the package documentation.
// With Options.Copy it adopts a storage node's database as a local copy
// (lenkwerk follow). Run again after a failure it finishes what is left.
func Adopt(ctx context.Context, databaseURL string, opts Options) error {
	u, err := url.Parse(databaseURL)
	if err == nil {
		for k := range u.Query() {
			if strings.HasPrefix(k, "x-migrations-table") {
				return fmt.Errorf("adopt records the version in golang-migrate's default table: remove %s from the URL", k)
			}
		}
	}
	check := serverCheck{logical: true, adopting: true}
	return withMigrate(ctx, databaseURL, opts, check, func(r *runner) error {
		if err := r.adopt(ctx); err != nil {
			return err
		}
		latest := Versions()[len(Versions())-1]
		return r.migrateTo(ctx, func(uint) (uint, error) { return latest, nil })
	})
}

// adopt runs the adoption transaction, unless the database was adopted
// already (a run that failed after it). checkServer ran precheckAdopt.
func (r *runner) adopt(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, r.pgURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", kvdriver.Redact(r.pgURL), err)
	}
	defer conn.Close(context.Background())
	cur, dirty, err := currentVersion(r.m)
	if err != nil {
		return err
	}
	if dirty {
		return explain(migrate.ErrDirty{Version: int(cur)}, "")
	}
	ext, err := baggerInstalled(ctx, conn)
	if err != nil {
		return err
	}
	if ext == "" {
		adopted, err := adoptedFrom(ctx, conn)
		if err != nil {
			return err
		}
		r.note(fmt.Sprintf("adopted %s before: migrating up", adopted))
		return nil
	}
	if cur != 0 {
		return fmt.Errorf("this database holds both Bagger's extension %s and Lenkwerk version %d: refusing to adopt (nothing was changed)",
			BaggerExtension, cur)
	}
	applied, notes, err := adoptTx(ctx, conn)
	if err != nil {
		return err
	}
	for _, name := range applied {
		r.applied(name)
	}
	for _, msg := range notes {
		r.note(msg)
	}
	return nil
}

// precheckAdopt refuses, before golang-migrate even creates its version
// table, what Adopt would refuse: no extension to adopt (unless a run
// adopted it already), another version of it, objects other than the
// expected ones, a publication or slot in the way. recorded is what
// lenkwerk.setting holds (nil: nothing). adoptTx checks again, under lock.
func precheckAdopt(ctx context.Context, conn *pgx.Conn, recorded *Provisioned, opts Options) error {
	ext, err := baggerInstalled(ctx, conn)
	if err != nil {
		return err
	}
	if ext == "" {
		adopted, err := adoptedFrom(ctx, conn)
		if err != nil || adopted != "" {
			return err
		}
		return fmt.Errorf("%w: this database has no extension %s (a new Lenkwerk database: lenkwerk migrate up)",
			ErrNoBaggerExtension, BaggerExtension)
	}
	if recorded != nil {
		return fmt.Errorf("this database holds both Bagger's extension %s and Lenkwerk's schema lenkwerk: refusing to adopt (nothing was changed)",
			BaggerExtension)
	}
	if ext != BaggerVersion {
		return fmt.Errorf("%w: %s is at version %s; Lenkwerk adopts %s (nothing was changed)",
			ErrBaggerMismatch, BaggerExtension, ext, BaggerVersion)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("adopt: begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	var extOID uint32
	if _, err := tx.Exec(ctx, `SET LOCAL search_path = pg_catalog`); err != nil {
		return fmt.Errorf("adopt: set search_path: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT oid FROM pg_extension WHERE extname = $1`, BaggerExtension).Scan(&extOID); err != nil {
		return fmt.Errorf("adopt: look for extension %s: %w", BaggerExtension, err)
	}
	if err := compareFacts(ctx, tx, extOID); err != nil {
		return err
	}
	if _, err := checkBaggerPublication(ctx, tx); err != nil {
		return err
	}
	if opts.Copy {
		return nil
	}
	return checkBaggerSlot(ctx, conn, opts.Slot)
}

// baggerInstalled returns the version of Bagger's extension in the
// database ("" when it is not installed).
func baggerInstalled(ctx context.Context, conn *pgx.Conn) (string, error) {
	var v string
	err := conn.QueryRow(ctx, `SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1`, BaggerExtension).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look for extension %s: %w", BaggerExtension, err)
	}
	return v, nil
}

// adoptedFrom returns what the database was adopted from ("" if not).
func adoptedFrom(ctx context.Context, conn *pgx.Conn) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('lenkwerk.setting') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return "", err
	}
	var v string
	err := conn.QueryRow(ctx, `SELECT value FROM lenkwerk.setting WHERE name = $1`, adoptedSetting).Scan(&v)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("read lenkwerk.setting: %w", err)
	}
	return v, nil
}

// adoptTx is the adoption itself, one transaction: check the extension's
// objects, keep its rows, drop it and its publication, run the migrations
// before the slot's as `up` would, put the rows and sequence positions
// back, and record the version. It returns the migrations it applied and
// what else to report.
func adoptTx(ctx context.Context, conn *pgx.Conn) (applied, report []string, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("adopt: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.Background())
		}
	}()
	fail := func(what string, err error) error {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Detail != "" {
			err = fmt.Errorf("%w\nDETAIL: %s", err, pgErr.Detail)
		}
		return fmt.Errorf("adopt: %s: %w\nNothing was changed: the adoption is one transaction", what, err)
	}
	// golang-migrate's lock: no migration of this database runs meanwhile.
	var db, schema string
	if err := tx.QueryRow(ctx, `SELECT current_database(), current_schema()`).Scan(&db, &schema); err != nil {
		return nil, nil, fail("read the current schema", err)
	}
	versionTable := pgx.Identifier{schema, "schema_migrations"}.Sanitize()
	lockID, _ := database.GenerateAdvisoryLockId(db, schema, "schema_migrations")
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::bigint)`, lockID); err != nil {
		return nil, nil, fail("take the migration lock", err)
	}
	var versions int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+versionTable).Scan(&versions); err != nil {
		return nil, nil, fail("read the version", err)
	}
	if versions != 0 {
		return nil, nil, fail("check the version", errors.New("another migration ran meanwhile"))
	}
	if _, err := tx.Exec(ctx, `SET LOCAL search_path = pg_catalog`); err != nil {
		return nil, nil, fail("set search_path", err)
	}
	var extOID uint32
	if err := tx.QueryRow(ctx, `SELECT oid FROM pg_extension WHERE extname = $1`, BaggerExtension).Scan(&extOID); err != nil {
		return nil, nil, fail("look for the extension", err)
	}
	// Nobody writes the rows between their copy and the drop.
	if _, err := tx.Exec(ctx, `DO $$
		DECLARE r regclass;
		BEGIN
		  FOR r IN SELECT objid::regclass FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
		           WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass
		             AND d.refobjid = `+fmt.Sprint(extOID)+` AND d.deptype = 'e' AND c.relkind = 'r' LOOP
		    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r);
		  END LOOP;
		END $$`); err != nil {
		return nil, nil, fail("lock the extension's tables", err)
	}
	if err := compareFacts(ctx, tx, extOID); err != nil {
		return nil, nil, err
	}
	pub, err := checkBaggerPublication(ctx, tx)
	if err != nil {
		return nil, nil, err
	}
	grantees, err := baggerGrantees(ctx, tx, extOID)
	if err != nil {
		return nil, nil, fail("read the extension's privileges", err)
	}

	counts := make([]string, 0, len(baggerTables))
	type seqPos struct {
		last   int64
		called bool
	}
	seqs := map[string]seqPos{}
	for _, t := range baggerTables {
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE `+keptTable(t)+` ON COMMIT DROP AS SELECT * FROM ONLY storage.`+pgx.Identifier{t}.Sanitize()); err != nil {
			return nil, nil, fail("keep the rows of storage."+t, err)
		}
		var p seqPos
		if err := tx.QueryRow(ctx, `SELECT last_value, is_called FROM storage.`+pgx.Identifier{t + "_id_seq"}.Sanitize()).Scan(&p.last, &p.called); err != nil {
			return nil, nil, fail("read sequence storage."+t+"_id_seq", err)
		}
		seqs[t] = p
	}
	if _, err := tx.Exec(ctx, `DROP EXTENSION `+BaggerExtension); err != nil {
		return nil, nil, fail("drop extension "+BaggerExtension+" (its rows are kept)", err)
	}
	if pub {
		if _, err := tx.Exec(ctx, `DROP PUBLICATION `+DefaultPublication); err != nil {
			return nil, nil, fail("drop Bagger's publication "+DefaultPublication, err)
		}
	}
	if _, err := tx.Exec(ctx, `SET LOCAL search_path TO DEFAULT`); err != nil {
		return nil, nil, fail("reset search_path", err)
	}
	var at uint
	for _, v := range Versions() {
		if v >= slotVersion {
			break
		}
		name, body, err := upMigration(v)
		if err != nil {
			return nil, nil, err
		}
		if _, err := tx.Exec(ctx, body); err != nil {
			return nil, nil, fail("migration "+name, err)
		}
		applied = append(applied, name+" (adoption)")
		at = v
	}
	for _, t := range baggerTables {
		var cols string
		if err := tx.QueryRow(ctx, `SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_catalog.pg_attribute
			WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, keptTable(t)).Scan(&cols); err != nil {
			return nil, nil, fail("read the columns of storage."+t, err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO storage.`+pgx.Identifier{t}.Sanitize()+` (`+cols+`) SELECT `+cols+` FROM `+keptTable(t))
		if err != nil {
			return nil, nil, fail("put the rows of storage."+t+" back", err)
		}
		counts = append(counts, fmt.Sprintf("%s %d", t, tag.RowsAffected()))
		p := seqs[t]
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.setval($1::regclass, $2, $3)`, "storage."+t+"_id_seq", p.last, p.called); err != nil {
			return nil, nil, fail("set sequence storage."+t+"_id_seq", err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO lenkwerk.setting (name, value) VALUES ($1, $2)`, adoptedSetting, BaggerExtension+" "+BaggerVersion); err != nil {
		return nil, nil, fail("record the adoption", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+versionTable+` (version, dirty) VALUES ($1, false)`, int64(at)); err != nil {
		return nil, nil, fail("record version", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, fail("commit", err)
	}
	report = append(report, fmt.Sprintf("adopted %s %s in one transaction, every row kept (%s)",
		BaggerExtension, BaggerVersion, strings.Join(counts, ", ")))
	if len(grantees) > 0 {
		report = append(report, fmt.Sprintf("roles %s had privileges on Bagger's objects, which Lenkwerk's replaced: "+
			"GRANT lenkwerk_config TO each role that runs Bagger's configuration tools", strings.Join(grantees, ", ")))
	}
	return applied, report, nil
}

// keptTable is the temporary table holding a table's rows during Adopt.
func keptTable(t string) string { return pgx.Identifier{"pg_temp", "lenkwerk_adopt_" + t}.Sanitize() }

// upMigration returns the name ("3/u storage_schema") and SQL of version
// v's up migration.
func upMigration(v uint) (name, body string, err error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return "", "", fmt.Errorf("read embedded migrations: %w", err)
	}
	for _, e := range entries {
		m, err := source.DefaultParse(e.Name())
		if err != nil || m.Version != v || m.Direction != source.Up {
			continue
		}
		b, err := fs.ReadFile(files, e.Name())
		if err != nil {
			return "", "", fmt.Errorf("read %s: %w", e.Name(), err)
		}
		return fmt.Sprintf("%d/u %s", v, m.Identifier), string(b), nil
	}
	return "", "", fmt.Errorf("no up migration for version %d", v)
}
