package migrations

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/jackc/pgx/v5/pgconn"
)

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

// reset forgets the migration that ran last, before the next step: an
// error before that step's migration starts (the lock, the version table)
// must not be blamed on, and advised about as, the one before.
func (p *progress) reset() {
	p.mu.Lock()
	p.current = ""
	p.mu.Unlock()
}

func (p *progress) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}
