package devstack

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Options configure a cluster started by StartCluster or Start.
type Options struct {
	// WalLevel is the wal_level setting; default "logical".
	WalLevel string
	// Settings are extra postgresql.conf settings (name → value).
	Settings map[string]string
	// Dir holds the cluster (Dir/data, the socket and Dir/server.log); it
	// is created if missing. A Dir whose data directory was initialized
	// before is started as it is (WalLevel, Settings and the port were
	// fixed when it was created; a different Port is an error). Default: a
	// new temporary directory.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// TLS turns on ssl with these files, copied into the cluster directory
	// (owned by the server's user, key mode 0600, as PostgreSQL demands).
	TLS *TLS
	// HBA are pg_hba.conf lines put before the default rules (first match
	// wins), e.g. "hostssl all all 127.0.0.1/32 cert" and
	// "hostnossl all all 0.0.0.0/0 reject"; remember that "all" in the
	// database column does not match replication connections. The local
	// socket keeps trusting everyone: pgtest's own connections use it.
	HBA []string
}

// TLS are the server's certificate files for Options.TLS.
type TLS struct {
	// CertFile and KeyFile are the server certificate and key (PEM).
	CertFile, KeyFile string
	// CAFile, when set, holds the CAs whose client certificates the server
	// accepts (ssl_ca_file), needed for cert authentication.
	CAFile string
}

// Cluster is a PostgreSQL server started from the machine's binaries (or an
// external server named by LENKWERK_TEST_DATABASE_URL).
type Cluster struct {
	bindir  string
	dir     string // holds data/ and the socket dir
	port    int
	owner   *syscall.Credential
	extURL  *url.URL
	mu      sync.Mutex
	running bool
}

// External is a server this package did not start (a superuser URL of a
// server with wal_level=logical): Stop and Destroy leave it alone.
func External(u *url.URL) *Cluster { return &Cluster{extURL: u, running: true} }

// BinDir finds the directory holding the PostgreSQL server binaries.
func BinDir() (string, error) {
	if d := os.Getenv("LENKWERK_PG_BINDIR"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) > 0 {
		sort.Slice(m, func(i, j int) bool { return versionOf(m[i]) > versionOf(m[j]) })
		return filepath.Dir(m[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries found: install postgresql (Debian: apt-get install postgresql) or set LENKWERK_PG_BINDIR")
}

func versionOf(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// Start starts a cluster from the machine's server binaries and waits
// until it accepts connections. As root, the server runs as the "postgres"
// user, which then owns the cluster directory. The caller stops it with
// Stop or Destroy; ctx bounds only the start.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bindir, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, made, err := clusterDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Cluster, error) {
		if made {
			os.RemoveAll(dir)
		}
		return nil, err
	}
	if opts.Dir == "" {
		// Before anything can leak: a killed test binary leaves its
		// server running, and the next Start reaps it.
		if err := writeOwner(dir); err != nil {
			return fail(err)
		}
	}
	reapOnce.Do(func() { reapStale(bindir) })
	c := &Cluster{bindir: bindir, dir: dir}
	if os.Geteuid() == 0 {
		cred, err := postgresUser()
		if err != nil {
			return fail(err)
		}
		c.owner = cred
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(fmt.Errorf("chown cluster dir: %w", err))
		}
	}
	portChosen := false
	if _, err := os.Stat(filepath.Join(c.dataDir(), "PG_VERSION")); err == nil {
		if c.port, err = configuredPort(c.dataDir()); err != nil {
			return fail(err)
		}
		if opts.Port != 0 && opts.Port != c.port {
			return fail(fmt.Errorf("the cluster in %s listens on port %d, not %d", dir, c.port, opts.Port))
		}
	} else {
		if err := c.initdb(ctx, opts); err != nil {
			if c.owner != nil && errors.Is(err, os.ErrPermission) {
				err = fmt.Errorf("%w (as root the server runs as user postgres, which must be able to enter every directory above %s)", err, dir)
			}
			return fail(err)
		}
		portChosen = opts.Port == 0
	}
	for attempt := 1; ; attempt++ {
		err := c.start(ctx)
		if err == nil {
			return c, nil
		}
		// pg_ctl may have been cancelled after the server started.
		_ = c.run(context.Background(), "pg_ctl", "-D", c.dataDir(), "-m", "immediate", "-w", "stop")
		// freePort's port is free only until it is closed: a parallel test
		// binary (or etcd) may have bound it before PostgreSQL did.
		if !portChosen || attempt == 3 || !strings.Contains(err.Error(), "could not bind") {
			return fail(err)
		}
		port, perr := freePort()
		if perr != nil {
			return fail(perr)
		}
		if perr := c.setPort(port); perr != nil {
			return fail(perr)
		}
	}
}

// Start starts a stopped cluster and waits until it accepts connections.
func (c *Cluster) Start() error { return c.start(context.Background()) }

func (c *Cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.extURL != nil {
		return errors.New("cannot start an external server")
	}
	if c.running {
		return nil
	}
	logFile := filepath.Join(c.dir, "server.log")
	if err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-l", logFile, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	c.running = true
	return nil
}

// Stop stops the cluster (fast shutdown: clients are disconnected).
func (c *Cluster) Stop() error { return c.stop("stop", "fast") }

// stop shuts a running cluster down with pg_ctl's shutdown mode (fast,
// immediate); verb names the action in the error for an external server.
func (c *Cluster) stop(verb, mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.extURL != nil {
		return errors.New("cannot " + verb + " an external server")
	}
	if !c.running {
		return nil
	}
	if err := c.run(context.Background(), "pg_ctl", "-D", c.dataDir(), "-m", mode, "-w", "-t", "60", "stop"); err != nil {
		return err
	}
	c.running = false
	return nil
}

// Restart stops and starts the cluster on the same port.
func (c *Cluster) Restart() error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.Start()
}

// Destroy stops the cluster and removes its files.
func (c *Cluster) Destroy() error {
	if c.extURL != nil {
		return nil
	}
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	var err error
	if running {
		if err = c.Stop(); err != nil {
			// Last resort: immediate shutdown, so no server outlives the test.
			_ = c.run(context.Background(), "pg_ctl", "-D", c.dataDir(), "-m", "immediate", "-w", "stop")
		}
	}
	if rmErr := os.RemoveAll(c.dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and there is no postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bindir, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	if c.owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.owner}
	}
	return cmd
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	out, err := c.command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
