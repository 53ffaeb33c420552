package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
)

// agentPackage is the lenkwerk command's import path.
const agentPackage = "github.com/bagger/lenkwerk/agent/cmd/lenkwerk"

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// lenkwerkBinary returns LENKWERK_BIN or builds the lenkwerk command once
// per test binary. The build runs in the test's package directory, so it
// works in this repository and in any module that requires it; it writes
// to a temporary name and renames, so test binaries running at the same
// time never see a half-written file.
func lenkwerkBinary(ctx context.Context) (string, error) {
	if p := os.Getenv(BinEnv); p != "" {
		return p, nil
	}
	binOnce.Do(func() {
		dir := filepath.Join(os.TempDir(), "lenkwerk-harness-"+strconv.Itoa(os.Getuid()))
		if binErr = os.MkdirAll(dir, 0o755); binErr != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, "lenkwerk-*.tmp")
		if err != nil {
			binErr = err
			return
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp.Name(), agentPackage)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build %s (set %s to use a built binary): %w\n%s", agentPackage, BinEnv, err, out)
			return
		}
		// A rename replaces the name only: agents running the previous
		// build keep running it.
		binPath = filepath.Join(dir, "lenkwerk")
		binErr = os.Rename(tmp.Name(), binPath)
	})
	return binPath, binErr
}
