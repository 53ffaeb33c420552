package containers

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func init() {
	// Before testcontainers reads its configuration (lazily, on first use):
	// the reaper image cannot be pulled, and Cleanup removes what we start.
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	// Inside a container (/.dockerenv) testcontainers looks for the mapped
	// ports on the default gateway, which is right when the daemon is the
	// host's (a mounted socket) and wrong when it runs next to the tests,
	// as on our CI machines: there its bridge, docker0, is a local
	// interface and the ports are on 127.0.0.1.
	if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" && localDaemon() {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
}

// localDaemon reports whether the Docker daemon is reached by a local
// socket and its default bridge is an interface of this network namespace.
func localDaemon() bool {
	if h := os.Getenv("DOCKER_HOST"); h != "" && !strings.HasPrefix(h, "unix://") {
		return false
	}
	_, err := net.InterfaceByName("docker0")
	return err == nil
}

// Images names the images a stack runs.
type Images struct {
	// Postgres runs PostgreSQL with the official image's conventions
	// (POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD, command "postgres -c …").
	Postgres string
	// Etcd has the etcd server at EtcdEntrypoint, taking etcd's flags.
	Etcd           string
	EtcdEntrypoint string
	// Agent has the lenkwerk binary as its entrypoint.
	Agent string
}

// Default image names: what docker/build-images.sh builds.
const (
	DefaultPostgresImage  = "lenkwerk/postgres:15"
	DefaultEtcdImage      = "lenkwerk/etcd:dev"
	DefaultAgentImage     = "lenkwerk/agent:dev"
	DefaultEtcdEntrypoint = "/usr/local/bin/etcd"
)

// ImagesFromEnv returns the images named by LENKWERK_PG_IMAGE,
// LENKWERK_ETCD_IMAGE, LENKWERK_ETCD_ENTRYPOINT and LENKWERK_AGENT_IMAGE,
// or the defaults.
func ImagesFromEnv() Images {
	return Images{
		Postgres:       envOr("LENKWERK_PG_IMAGE", DefaultPostgresImage),
		Etcd:           envOr("LENKWERK_ETCD_IMAGE", DefaultEtcdImage),
		EtcdEntrypoint: envOr("LENKWERK_ETCD_ENTRYPOINT", DefaultEtcdEntrypoint),
		Agent:          envOr("LENKWERK_AGENT_IMAGE", DefaultAgentImage),
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var (
	buildOnce sync.Once
	buildErr  error
)

// EnsureImages runs docker/build-images.sh once per test binary: it builds
// the images of ImagesFromEnv whose names contain "lenkwerk" and that are
// missing or out of date (the agent image whenever the agent's code
// changed), and leaves other names to Docker. The script takes a lock, so
// test binaries running at the same time build once.
func EnsureImages(tb testing.TB) Images {
	tb.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		buildErr = buildImages()
		tb.Logf("docker/build-images.sh: %v", time.Since(start).Round(100*time.Millisecond))
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return ImagesFromEnv()
}

func buildImages() error {
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "docker", "build-images.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// Through bash, not the script's shebang: a clean clone may have lost
	// the executable bit (an archive, core.fileMode=false, a Windows
	// checkout).
	cmd := exec.CommandContext(ctx, "bash", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("bash %s: %w\n%s", script, err, out)
	}
	return nil
}
