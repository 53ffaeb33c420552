package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
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
	"time"

	"github.com/jackc/pgx/v5"
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

// setPort moves a stopped cluster to another port; the later setting in
// postgresql.conf wins.
func (c *Cluster) setPort(port int) error {
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "# pgtest: the first port was taken\nport = %d\n", port); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	c.port = port
	return nil
}

// clusterDir returns dir, created if missing, or a new temporary directory
// when dir is empty; made tells whether the directory is new.
func clusterDir(dir string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "lenkwerk-pgtest-")
		if err != nil {
			return "", false, fmt.Errorf("make cluster dir: %w", err)
		}
		return d, true, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, fmt.Errorf("cluster dir: %w", err)
	}
	_, statErr := os.Stat(abs)
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", false, fmt.Errorf("make cluster dir: %w", err)
	}
	return abs, os.IsNotExist(statErr), nil
}

// configuredPort reads the port a data directory initialized by Start was
// given (the last "port = N" line of postgresql.conf).
func configuredPort(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postgresql.conf"))
	if err != nil {
		return 0, fmt.Errorf("read postgresql.conf: %w", err)
	}
	port := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != "port" {
			continue
		}
		if p, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			port = p
		}
	}
	if port == 0 {
		return 0, fmt.Errorf("no port in %s/postgresql.conf", dataDir)
	}
	return port, nil
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

func (c *Cluster) initdb(ctx context.Context, opts Options) error {
	if err := c.run(ctx, "initdb", "-D", c.dataDir(), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync", "--locale=C"); err != nil {
		return err
	}
	port := opts.Port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	}
	c.port = port
	walLevel := opts.WalLevel
	if walLevel == "" {
		walLevel = "logical"
	}
	settings := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": "'" + c.dir + "'",
		"wal_level":               walLevel,
		"max_replication_slots":   "64",
		"max_wal_senders":         "64",
		"max_connections":         "300",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"synchronous_commit":      "off",
		"timezone":                "'UTC'",
		"log_min_messages":        "warning",
		"logging_collector":       "off",
	}
	if opts.TLS != nil {
		if err := c.installTLS(*opts.TLS, settings); err != nil {
			return err
		}
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	var b strings.Builder
	b.WriteString("\n# pgtest\n")
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	// Allow replication connections over TCP for every role (trust: tests
	// only), after the caller's rules.
	hbaFile := filepath.Join(c.dataDir(), "pg_hba.conf")
	hba, err := os.ReadFile(hbaFile)
	if err != nil {
		return fmt.Errorf("read pg_hba.conf: %w", err)
	}
	var h strings.Builder
	if len(opts.HBA) > 0 {
		h.WriteString("# pgtest: the server's local socket, for pgtest itself\n")
		h.WriteString("local all postgres trust\n")
		h.WriteString("# pgtest: Options.HBA\n")
		for _, line := range opts.HBA {
			h.WriteString(line + "\n")
		}
	}
	h.Write(hba)
	h.WriteString("host replication all 127.0.0.1/32 trust\n")
	// WriteFile keeps the file's owner and mode (it exists).
	if err := os.WriteFile(hbaFile, []byte(h.String()), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return nil
}

// freePort is a variable so a test can hand out a taken port.
var freePort = func() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.extURL != nil {
		return errors.New("cannot stop an external server")
	}
	if !c.running {
		return nil
	}
	if err := c.run(context.Background(), "pg_ctl", "-D", c.dataDir(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
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

// Port is the TCP port the cluster listens on (127.0.0.1).
func (c *Cluster) Port() int {
	if c.extURL != nil {
		p, _ := strconv.Atoi(c.extURL.Port())
		return p
	}
	return c.port
}

// DataDir is the cluster's data directory (empty for an external server).
func (c *Cluster) DataDir() string {
	if c.extURL != nil {
		return ""
	}
	return c.dataDir()
}

// BinDir is the directory of the server binaries (pg_recvlogical, psql…).
func (c *Cluster) BinDir() string { return c.bindir }

// URL returns a connection URL for database db as user (superuser
// "postgres" when user is empty).
func (c *Cluster) URL(db, user string) string {
	if c.extURL != nil {
		u := *c.extURL
		u.Path = "/" + db
		if user != "" {
			u.User = url.User(user)
		}
		return u.String()
	}
	if user == "" {
		user = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(user),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// adminURL is the superuser connection pgtest itself uses: the local
// socket, which Options.HBA cannot close (a cluster that requires TLS and
// client certificates over TCP still creates and drops databases).
func (c *Cluster) adminURL() string {
	if c.extURL != nil {
		return c.URL("postgres", "")
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.dir, c.port)
}

// SocketDir is the directory of the server's Unix socket (empty for an
// external server).
func (c *Cluster) SocketDir() string {
	if c.extURL != nil {
		return ""
	}
	return c.dir
}

// NewDatabase creates a fresh database and returns its superuser URL. The
// database and its replication slots are dropped when the test ends.
func (c *Cluster) NewDatabase(tb TB) string {
	tb.Helper()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "t_" + sanitize(tb.Name()) + "_" + hex.EncodeToString(rnd[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("devstack: postgres: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			tb.Errorf("devstack: postgres: %v", err)
		}
	})
	return c.URL(name, "")
}

// DropDatabase drops database name, first terminating its sessions and
// dropping its replication slots (DROP DATABASE refuses while slots exist).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if !running {
		return nil // the test stopped it; Destroy removes the files
	}
	conn, err := pgx.Connect(ctx, c.adminURL())
	if err != nil {
		return fmt.Errorf("drop database %s: connect: %w", name, err)
	}
	defer conn.Close(ctx)
	// A walsender may hold a slot; terminate sessions until the slots go.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		if qerr := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); qerr != nil {
			return fmt.Errorf("drop database %s: count slots: %w", name, qerr)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop database %s: %d replication slots stay active: %v", name, left, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func (c *Cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.adminURL())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}
