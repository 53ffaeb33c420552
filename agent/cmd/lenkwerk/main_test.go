package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMain removes the lenkwerk binary that lenkwerkBinary built once for
// the whole test binary (tests' own builds live in their t.TempDir).
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
