package migrations

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// maxDiffLines bounds the differences a mismatch error lists.
const maxDiffLines = 30

// compareFacts refuses, naming every difference, an extension whose
// objects are not those of bagger_lw_storage 0.0.1 (see adopt/describe.sql).
func compareFacts(ctx context.Context, tx pgx.Tx, extOID uint32) error {
	rows, err := tx.Query(ctx, describeSQL, extOID)
	if err != nil {
		return fmt.Errorf("adopt: describe extension %s: %w", BaggerExtension, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("adopt: describe extension %s: %w", BaggerExtension, err)
	}
	missing, unexpected := diffFacts(parseFacts(expectedFacts), got)
	if len(missing)+len(unexpected) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s in this database differs from %s %s (nothing was changed):", BaggerExtension, BaggerExtension, BaggerVersion)
	n := 0
	for _, l := range []struct {
		what  string
		facts []string
	}{{"missing:   ", missing}, {"unexpected:", unexpected}} {
		for _, f := range l.facts {
			if n == maxDiffLines {
				fmt.Fprintf(&b, "\n  … and %d more", len(missing)+len(unexpected)-n)
				break
			}
			fmt.Fprintf(&b, "\n  %s %s", l.what, f)
			n++
		}
	}
	b.WriteString("\nLenkwerk adopts only the objects it knows; bring the extension back to them " +
		"(or move what was added out of schema storage) and adopt again")
	return fmt.Errorf("%w: %s", ErrBaggerMismatch, b.String())
}

// parseFacts reads the expected facts: one a line, # comments.
func parseFacts(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// diffFacts returns the facts of want missing from got and those of got
// not in want, sorted.
func diffFacts(want, got []string) (missing, unexpected []string) {
	w := map[string]bool{}
	for _, f := range want {
		w[f] = true
	}
	g := map[string]bool{}
	for _, f := range got {
		g[f] = true
		if !w[f] {
			unexpected = append(unexpected, f)
		}
	}
	for _, f := range want {
		if !g[f] {
			missing = append(missing, f)
		}
	}
	slices.Sort(missing)
	slices.Sort(unexpected)
	return slices.Compact(missing), slices.Compact(unexpected)
}

// checkBaggerPublication reports whether Bagger's publication exists (its
// script creates it, but PostgreSQL does not make it a member of the
// extension), refusing one that publishes anything but Bagger's six tables.
func checkBaggerPublication(ctx context.Context, tx pgx.Tx) (bool, error) {
	var all bool
	err := tx.QueryRow(ctx, `SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1`, DefaultPublication).Scan(&all)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("adopt: look for publication %s: %w", DefaultPublication, err)
	}
	rows, err := tx.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1 ORDER BY 1`, DefaultPublication)
	if err != nil {
		return false, fmt.Errorf("adopt: read publication %s: %w", DefaultPublication, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("adopt: read publication %s: %w", DefaultPublication, err)
	}
	want := make([]string, len(baggerTables))
	for i, t := range baggerTables {
		want[i] = "storage." + t
	}
	slices.Sort(want)
	if all || !slices.Equal(tables, want) {
		what := strings.Join(tables, ", ")
		if all {
			what = "ALL TABLES"
		}
		return false, fmt.Errorf("%w: publication %s publishes %s, not Bagger's %s (nothing was changed): "+
			"adoption drops Bagger's publication; move other tables to a publication of their own and adopt again",
			ErrBaggerMismatch, DefaultPublication, what, strings.Join(want, ", "))
	}
	return true, nil
}

// baggerGrantees lists the roles other than the owners that hold
// privileges on the extension's schema, tables or functions: adopting
// replaces those objects, and these roles need lenkwerk_config instead.
func baggerGrantees(ctx context.Context, tx pgx.Tx, extOID uint32) ([]string, error) {
	rows, err := tx.Query(ctx, `WITH member AS (
			SELECT classid, objid FROM pg_catalog.pg_depend
			 WHERE refclassid = 'pg_catalog.pg_extension'::regclass AND refobjid = $1 AND deptype = 'e'),
		acl AS (
			SELECT (aclexplode(relacl)).grantee, relowner AS owner FROM pg_catalog.pg_class
			 WHERE oid IN (SELECT objid FROM member WHERE classid = 'pg_catalog.pg_class'::regclass) AND relacl IS NOT NULL
			UNION ALL
			SELECT (aclexplode(proacl)).grantee, proowner FROM pg_catalog.pg_proc
			 WHERE oid IN (SELECT objid FROM member WHERE classid = 'pg_catalog.pg_proc'::regclass) AND proacl IS NOT NULL
			UNION ALL
			SELECT (aclexplode(nspacl)).grantee, nspowner FROM pg_catalog.pg_namespace
			 WHERE oid IN (SELECT objid FROM member WHERE classid = 'pg_catalog.pg_namespace'::regclass) AND nspacl IS NOT NULL)
		SELECT DISTINCT grantee::regrole::text FROM acl WHERE grantee <> 0 AND grantee <> owner ORDER BY 1`, extOID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// effectiveSlot is the slot migration 6 will record: opts', else the
// connection's lenkwerk.slot_name setting, else the default.
func effectiveSlot(ctx context.Context, conn *pgx.Conn, opt string) (string, error) {
	if opt != "" {
		return opt, nil
	}
	var s string
	err := conn.QueryRow(ctx, `SELECT coalesce(nullif(current_setting($1, true), ''), $2)`, SlotSetting, DefaultSlot).Scan(&s)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", SlotSetting, err)
	}
	return s, nil
}

// slotInfo describes a replication slot and who streams it.
type slotInfo struct {
	plugin, database string
	ours             bool // in this database
	pid              *int32
	client           string
}

func lookSlot(ctx context.Context, conn *pgx.Conn, slot string) (*slotInfo, error) {
	var s slotInfo
	err := conn.QueryRow(ctx, `SELECT coalesce(s.plugin, ''), coalesce(s.database::text, ''), coalesce(s.database = current_database(), false),
			s.active_pid, coalesce(nullif(a.application_name, ''), 'no application_name') || coalesce(' from ' || host(a.client_addr), '')
		FROM pg_catalog.pg_replication_slots s LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1`, slot).Scan(&s.plugin, &s.database, &s.ours, &s.pid, &s.client)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	return &s, nil
}

// checkBaggerSlot refuses, before anything changes, a slot of the name
// Lenkwerk will use that it could not replace: Bagger's agent's while it
// streams, or one that is not Bagger's agent's.
func checkBaggerSlot(ctx context.Context, conn *pgx.Conn, opt string) error {
	slot, err := effectiveSlot(ctx, conn, opt)
	if err != nil {
		return err
	}
	s, err := lookSlot(ctx, conn, slot)
	if err != nil || s == nil {
		return err
	}
	switch {
	case !s.ours:
		return fmt.Errorf("replication slot %q belongs to database %s: choose another slot name (--slot) and adopt again (nothing was changed)",
			slot, s.database)
	case s.plugin != baggerPlugin:
		return fmt.Errorf("replication slot %q exists with plugin %s, not %s as Bagger's agent's: drop it with "+
			"SELECT pg_drop_replication_slot('%s') if nothing uses it, or choose another name (--slot); nothing was changed",
			slot, s.plugin, baggerPlugin, slot)
	case s.pid != nil:
		return fmt.Errorf("%w: Bagger's agent's replication slot %q (%s) is streamed by process %d (%s): "+
			"stop Bagger's Lenkwerk agent, then adopt again; Lenkwerk replaces the slot by a pgoutput slot, "+
			"which Bagger's agent cannot stream (nothing was changed)", ErrSlotInUse, slot, baggerPlugin, *s.pid, s.client)
	}
	return nil
}

// replaceBaggerSlot drops the test_decoding slot of Bagger's agent that an
// adopted database still has under the recorded slot name, just before
// migration 7 creates Lenkwerk's pgoutput slot in its place, unless a
// consumer streams it. Elsewhere migration 7 refuses an existing slot.
func replaceBaggerSlot(ctx context.Context, pgURL string, note func(string)) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", kvdriver.Redact(pgURL), err)
	}
	defer conn.Close(context.Background())
	adopted, err := adoptedFrom(ctx, conn)
	if err != nil || adopted == "" {
		return err
	}
	names, err := Names(ctx, conn)
	if err != nil || names == nil || names.Copy || names.Slot == "" {
		return err
	}
	s, err := lookSlot(ctx, conn, names.Slot)
	if err != nil || s == nil || !s.ours || s.plugin != baggerPlugin {
		return err
	}
	inUse := func(pid int32, client string) error {
		return fmt.Errorf("%w: Bagger's agent's replication slot %q (%s) is streamed by process %d (%s): "+
			"stop Bagger's Lenkwerk agent, then run lenkwerk migrate up; Lenkwerk replaces the slot by a pgoutput slot, "+
			"which Bagger's agent cannot stream (the database is adopted, the slot migration is not applied yet)",
			ErrSlotInUse, names.Slot, baggerPlugin, pid, client)
	}
	if s.pid != nil {
		return inUse(*s.pid, s.client)
	}
	// A consumer that connects meanwhile makes the drop fail.
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, names.Slot); err != nil {
		if s, lerr := lookSlot(ctx, conn, names.Slot); lerr == nil && s != nil && s.pid != nil {
			return inUse(*s.pid, s.client)
		}
		return fmt.Errorf("drop Bagger's agent's replication slot %q: %w", names.Slot, err)
	}
	note(fmt.Sprintf("dropped Bagger's agent's replication slot %q (%s, nobody streamed it): the next migration "+
		"creates Lenkwerk's pgoutput slot in its place; Bagger's agent cannot stream it", names.Slot, baggerPlugin))
	return nil
}
