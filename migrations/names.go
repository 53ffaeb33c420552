package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Provisioned holds the names a database was provisioned with.
type Provisioned struct {
	Publication string
	Slot        string
	// Copy: a local copy (Options.Copy), with neither publication nor slot.
	Copy bool
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
		coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'slot_name'), ''),
		coalesce((SELECT value = 'copy' FROM lenkwerk.setting WHERE name = 'role'), false)`).Scan(&p.Publication, &p.Slot, &p.Copy)
	if err != nil {
		return nil, fmt.Errorf("read lenkwerk.setting: %w", err)
	}
	return &p, nil
}
