package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// lenkwerkBinary builds the lenkwerk command once per test binary.
func lenkwerkBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lenkwerk-test-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "lenkwerk")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		// LENKWERK_TEST_BUILDFLAGS="-race" runs the agent processes under
		// the race detector; a race report fails the test.
		args := append([]string{"build", "-o", binPath}, strings.Fields(os.Getenv("LENKWERK_TEST_BUILDFLAGS"))...)
		if out, err := exec.CommandContext(ctx, "go", append(args, ".")...).CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// TestMain removes the lenkwerk binary that lenkwerkBinary built once for
// the whole test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
