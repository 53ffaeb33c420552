package devstack

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

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

// setPort moves a stopped cluster to another port; the later setting in
// postgresql.conf wins.
func (c *Cluster) setPort(port int) error {
	if err := c.appendConf(fmt.Sprintf("# pgtest: the first port was taken\nport = %d\n", port)); err != nil {
		return err
	}
	c.port = port
	return nil
}

// appendConf appends text to the cluster's postgresql.conf.
func (c *Cluster) appendConf(text string) error {
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
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
