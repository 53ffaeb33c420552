package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ArchiveSettings are the postgresql.conf settings (for Options.Settings)
// that archive every WAL segment into dir, which must exist and be
// writable by the server's user (see MakeArchiveDir): with a base backup
// they allow a point-in-time restore (RestoreBackup).
func ArchiveSettings(dir string) map[string]string {
	return map[string]string{
		"archive_mode":    "on",
		"archive_command": "'test ! -f " + dir + "/%f && cp %p " + dir + "/%f'",
		"archive_timeout": "0",
	}
}

// MakeArchiveDir makes a WAL archive directory the server can write,
// removed when the test ends.
func MakeArchiveDir(tb TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", tempPrefix+"archive-")
	if err != nil {
		tb.Fatalf("devstack: postgres: make archive dir: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		cred, err := postgresUser()
		if err != nil {
			tb.Fatalf("devstack: postgres: %v", err)
		}
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			tb.Fatalf("devstack: postgres: chown archive dir: %v", err)
		}
	}
	return dir
}

// StartStandby makes a streaming standby of c (pg_basebackup -R, WAL
// streamed along) in a new directory and starts it on a port of its own;
// it is destroyed when the test ends. The standby keeps c's settings.
func (c *Cluster) StartStandby(tb TB) *Cluster {
	tb.Helper()
	s, err := c.baseBackup(context.Background(), true)
	s = Tie(tb, s, err, (*Cluster).Destroy, "devstack: postgres: standby: ", "devstack: postgres: destroy standby: ")
	if err := s.start(context.Background()); err != nil {
		tb.Fatalf("devstack: postgres: start standby: %v", err)
	}
	return s
}

// BaseBackup takes a base backup of c (pg_basebackup, WAL streamed along)
// into a new stopped cluster, destroyed when the test ends. Start it as a
// copy of c at the backup's end, or hand it to RestoreBackup.
func (c *Cluster) BaseBackup(tb TB) *Cluster {
	tb.Helper()
	b, err := c.baseBackup(context.Background(), false)
	return Tie(tb, b, err, (*Cluster).Destroy, "devstack: postgres: base backup: ", "devstack: postgres: destroy backup: ")
}

func (c *Cluster) baseBackup(ctx context.Context, standby bool) (*Cluster, error) {
	if c.extURL != nil {
		return nil, errors.New("cannot back up an external server")
	}
	dir, _, err := clusterDir("")
	if err != nil {
		return nil, err
	}
	if err := writeOwner(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Cluster{bindir: c.bindir, dir: dir, owner: c.owner}
	fail := func(err error) (*Cluster, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if s.owner != nil {
		if err := os.Chown(dir, int(s.owner.Uid), int(s.owner.Gid)); err != nil {
			return fail(fmt.Errorf("chown cluster dir: %w", err))
		}
	}
	args := []string{"-h", c.dir, "-p", fmt.Sprint(c.port), "-U", "postgres", "-D", s.dataDir(), "-X", "stream", "-c", "fast", "--no-sync"}
	if standby {
		args = append(args, "-R")
	}
	if err := s.run(ctx, "pg_basebackup", args...); err != nil {
		return fail(err)
	}
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	// The copy's postgresql.conf names c's port and socket directory.
	if err := s.appendConf(fmt.Sprintf("# pgtest: a copy of %s\nport = %d\nunix_socket_directories = '%s'\n", c.dir, port, s.dir)); err != nil {
		return fail(err)
	}
	s.port = port
	return s, nil
}

// RestoreBackup makes b, a stopped base backup of a cluster whose WAL is
// archived in archiveDir, recover to target (recovery_target_lsn,
// inclusive) and promote there: a point-in-time restore, which starts a
// new timeline. It starts b on port (e.g. the lost server's) and waits
// until it accepts writes.
func (b *Cluster) RestoreBackup(ctx context.Context, archiveDir, target string, port int) error {
	conf := fmt.Sprintf("# pgtest: point-in-time restore\nport = %d\nrestore_command = 'cp %s/%%f %%p'\nrecovery_target_lsn = '%s'\nrecovery_target_action = 'promote'\n", port, archiveDir, target)
	b.port = port
	if err := b.appendConf(conf); err != nil {
		return err
	}
	if err := b.writeDataFile("recovery.signal", ""); err != nil {
		return err
	}
	if err := b.start(ctx); err != nil {
		return err
	}
	return b.waitPrimary(ctx)
}

func (c *Cluster) writeDataFile(name, content string) error {
	p := filepath.Join(c.dataDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if c.owner != nil {
		if err := os.Chown(p, int(c.owner.Uid), int(c.owner.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	return nil
}

// Kill stops the cluster the way a crash does (immediate shutdown: no
// checkpoint, nothing more sent to standbys).
func (c *Cluster) Kill() error { return c.stop("kill", "immediate") }

// TakeOver makes the stopped standby c the primary at port (the dead
// primary's): it forgets its upstream, starts on port and is promoted
// (pg_ctl promote), and returns once it accepts writes.
func (c *Cluster) TakeOver(ctx context.Context, port int) error {
	// Without the upstream a restarted standby does not stream from
	// itself once it listens on the old primary's port.
	if err := c.appendConf(fmt.Sprintf("# pgtest: take-over\nport = %d\nprimary_conninfo = ''\n", port)); err != nil {
		return err
	}
	c.port = port
	if err := c.start(ctx); err != nil {
		return err
	}
	return c.Promote(ctx)
}

// Promote promotes a running standby and waits until it accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-w", "-t", "60", "promote"); err != nil {
		return err
	}
	return c.waitPrimary(ctx)
}

// waitPrimary waits until the server is out of recovery.
func (c *Cluster) waitPrimary(ctx context.Context) error {
	for {
		conn, err := pgx.Connect(ctx, c.adminURL())
		if err == nil {
			var recovery bool
			err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery)
			conn.Close(context.Background())
			if err == nil && !recovery {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to leave recovery: %w (last: %v)", c.dir, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CopySlot copies the state of replication slot name from the stopped or
// checkpointed cluster from into the stopped cluster c (pg_replslot/name,
// as Patroni's permanent slots do), where it is loaded at the next start.
func (c *Cluster) CopySlot(from *Cluster, name string) error {
	if err := checkSlotName(name); err != nil {
		return err
	}
	return c.InstallSlot(filepath.Join(from.dataDir(), "pg_replslot", name), name)
}

// SaveSlot copies the state of replication slot name of the stopped or
// checkpointed cluster c into a new directory, removed when the test ends,
// for InstallSlot: a slot copy taken earlier.
func (c *Cluster) SaveSlot(tb TB, name string) string {
	tb.Helper()
	if err := checkSlotName(name); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp("", tempPrefix+"slot-")
	if err != nil {
		tb.Fatalf("devstack: postgres: save slot: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := copyFiles(filepath.Join(c.dataDir(), "pg_replslot", name), dir); err != nil {
		tb.Fatalf("devstack: postgres: save slot %s: %v", name, err)
	}
	return dir
}

// InstallSlot puts the slot state in dir (SaveSlot's, or a slot directory)
// into the stopped cluster c as slot name.
func (c *Cluster) InstallSlot(dir, name string) error {
	if err := checkSlotName(name); err != nil {
		return err
	}
	dst := filepath.Join(c.dataDir(), "pg_replslot", name)
	if err := copyFiles(dir, dst); err != nil {
		return fmt.Errorf("install slot %s: %w", name, err)
	}
	if c.owner != nil {
		return filepath.Walk(dst, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(p, int(c.owner.Uid), int(c.owner.Gid))
		})
	}
	return nil
}

func checkSlotName(name string) error {
	if strings.ContainsAny(name, "/.") || name == "" {
		return fmt.Errorf("invalid slot name %q", name)
	}
	return nil
}

// copyFiles copies the regular files of src into dst (created).
func copyFiles(src, dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		// A running server writes state.tmp and renames it to state.
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
