// Package baggertest gives tests a PostgreSQL server where an extension
// shaped like Bagger's own bagger_lw_storage 0.0.1 can be installed, for
// the tests of `lenkwerk migrate adopt`. The fixture (testdata/) was
// written for Lenkwerk from Bagger's published schema.
//
//	c := baggertest.StartCluster(t, devstack.Options{})
//	url := c.NewDatabase(t)
//	baggertest.Install(t, ctx, url) // CREATE EXTENSION bagger_lw_storage, rows
//
// PostgreSQL 15 reads extensions only from its share directory
// (`pg_config --sharedir`/extension; extension_control_path came with
// PostgreSQL 18). Files written into the machine's share directory would
// be shared by every test binary of every checkout running at once, and
// one test's cleanup would remove them under another; the directory may
// also not be writable. Instead StartCluster builds a private installation:
// the server finds its share directory relative to its own executable, so
// a tree that mirrors the installation's paths, with copies of postgres and
// pg_ctl and symbolic links for everything else, has a share directory of
// its own whose extension directory holds the fixture besides links to the
// real extensions. The tree is removed with the cluster; trees left by a
// killed test binary are removed by the next StartCluster.
//
// Tests only: production code never imports this package.
package baggertest

import (
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/jackc/pgx/v5"
)

//go:embed testdata/*
var fixture embed.FS

// Extension is the fixture's extension name, Bagger's.
const Extension = "bagger_lw_storage"

// treePrefix names the private installations in the temporary directory.
const treePrefix = "lenkwerk-baggertest-"

// StartCluster starts a private cluster (destroyed when the test ends)
// whose server offers the fixture extension. It sets LENKWERK_PG_BINDIR for
// the test (t.Setenv), so the test must not be parallel.
func StartCluster(t *testing.T, opts devstack.Options) *devstack.Cluster {
	t.Helper()
	bindir, err := devstack.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	removeStale()
	root, err := os.MkdirTemp("", treePrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the cluster's own cleanup.
	t.Cleanup(func() { os.RemoveAll(root) })
	privBin, err := buildTree(root, bindir)
	if err != nil {
		t.Fatalf("baggertest: private installation: %v", err)
	}
	t.Setenv("LENKWERK_PG_BINDIR", privBin)
	c, err := devstack.Start(context.Background(), opts)
	return devstack.Tie(t, c, err, (*devstack.Cluster).Destroy, "baggertest: ", "baggertest: destroy cluster: ")
}

// buildTree builds the private installation under root and returns its
// bin directory.
func buildTree(root, bindir string) (string, error) {
	// The server (it runs as user postgres when the test runs as root) must
	// reach every file.
	if err := os.Chmod(root, 0o755); err != nil {
		return "", err
	}
	dirs := map[string]string{"bindir": bindir}
	for _, k := range []string{"sharedir", "pkglibdir"} {
		out, err := exec.Command(filepath.Join(bindir, "pg_config"), "--"+k).Output()
		if err != nil {
			return "", fmt.Errorf("pg_config --%s: %w", k, err)
		}
		dirs[k] = strings.TrimSpace(string(out))
	}
	under := func(p string) string { return filepath.Join(root, p) }
	for _, d := range []string{dirs["bindir"], filepath.Join(dirs["sharedir"], "extension"), filepath.Dir(dirs["pkglibdir"])} {
		if err := os.MkdirAll(under(d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Symlink(dirs["pkglibdir"], under(dirs["pkglibdir"])); err != nil && !os.IsExist(err) {
		return "", err
	}
	// postgres and pg_ctl are copies: a link would resolve to the real
	// installation, and pg_ctl starts the postgres next to itself.
	if err := mirror(bindir, under(bindir), func(name string) bool { return name == "postgres" || name == "pg_ctl" }); err != nil {
		return "", err
	}
	share := dirs["sharedir"]
	if err := mirror(share, under(share), func(name string) bool { return false }, "extension"); err != nil {
		return "", err
	}
	ext := filepath.Join(share, "extension")
	if err := mirror(ext, under(ext), func(name string) bool { return false }); err != nil {
		return "", err
	}
	entries, err := fs.ReadDir(fixture, "testdata")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := fs.ReadFile(fixture, "testdata/"+e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(under(ext), e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	return under(bindir), nil
}

// mirror links every entry of src into dst, copying those copy selects,
// skipping skip.
func mirror(src, dst string, copyIt func(string) bool, skip ...string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if slices.Contains(skip, name) {
			continue
		}
		from, to := filepath.Join(src, name), filepath.Join(dst, name)
		if copyIt(name) {
			if err := copyFile(from, to); err != nil {
				return err
			}
			continue
		}
		if err := os.Symlink(from, to); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// removeStale removes the private installations of test binaries that are
// gone (killed before their cleanup).
func removeStale() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), treePrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), treePrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			os.RemoveAll(m)
		}
	}
}

// Install creates the fixture extension in the database at url and fills
// it through its functions, as Bagger's tools would: three storage nodes,
// two servermap generations, three dimensions (one inserted before the
// others), an index with two fields and four settings.
func Install(t testing.TB, ctx context.Context, url string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		`CREATE EXTENSION ` + Extension,
		`SELECT storage.register_pg_instance('pg1.example', 5432, 'schaufel')`,
		`SELECT storage.register_pg_instance('pg1.example', 5433, 'schaufel')`,
		`SELECT storage.register_pg_instance('pg2.example', 5432, 'schaufel')`,
		`SELECT storage.set_pg_instance_status(1, 3)`,
		`SELECT storage.set_pg_instance_status(3, 1)`,
		`SELECT storage.save_servermap('{"servers": [["pg1.example:5432", "pg2.example:5432"]]}')`,
		`SELECT storage.save_servermap('{"servers": [["pg1.example:5432", "pg1.example:5433"]], "gen": "zwei"}')`,
		`SELECT storage.append_dimension('host', NULL, NULL, NULL)`,
		`SELECT storage.append_dimension('app', 'unknown', '2024-01-01', NULL)`,
		`SELECT storage.insert_dimension(0, 'tenant', NULL, NULL, '2031-01-01 12:30:00')`,
		`SELECT storage.save_index('bagger_idx', 'gin', NULL, NULL, NULL)`,
		`SELECT storage.append_index_field(1, 'payload', NULL, NULL)`,
		`SELECT storage.append_index_field(1, 'lower(app)', '2024-06-01', NULL)`,
		`SELECT storage.save_config('kvstore_type', '"etcd"')`,
		`SELECT storage.save_config('kvstore_config', '{"host": "etcd.example", "port": 2379}')`,
		`SELECT storage.save_config('retain_hrs', '48')`,
		`SELECT storage.save_config('grüße', '["ä", "\u00e9"]')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("baggertest: %s: %v", sql, err)
		}
	}
}
