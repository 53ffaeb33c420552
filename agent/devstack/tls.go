package devstack

import (
	"fmt"
	"os"
	"path/filepath"
)

// installTLS copies the server's certificate files into the cluster
// directory and turns ssl on. The copies belong to the server's user: as
// root, files under a test's temporary directory are neither reachable
// nor, for the key, acceptable to PostgreSQL (it wants its own 0600 key).
func (c *Cluster) installTLS(t TLS, settings map[string]string) error {
	if t.CertFile == "" || t.KeyFile == "" {
		return fmt.Errorf("devstack: postgres: TLS needs CertFile and KeyFile")
	}
	files := []struct{ src, name, setting string }{
		{t.CertFile, "server.crt", "ssl_cert_file"},
		{t.KeyFile, "server.key", "ssl_key_file"},
		{t.CAFile, "root.crt", "ssl_ca_file"},
	}
	for _, f := range files {
		if f.src == "" {
			continue
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("devstack: postgres: TLS %s: %w", f.setting, err)
		}
		dst := filepath.Join(c.dir, "tls-"+f.name)
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			return fmt.Errorf("devstack: postgres: TLS %s: %w", f.setting, err)
		}
		if c.owner != nil {
			if err := os.Chown(dst, int(c.owner.Uid), int(c.owner.Gid)); err != nil {
				return fmt.Errorf("devstack: postgres: TLS %s: %w", f.setting, err)
			}
		}
		settings[f.setting] = "'" + dst + "'"
	}
	settings["ssl"] = "on"
	settings["ssl_min_protocol_version"] = "'TLSv1.2'"
	return nil
}
