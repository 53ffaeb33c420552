package harness

import (
	"errors"
	"strings"
	"testing"
)

// TestRedactError: a store error in WaitForKey's timeout keeps what went
// wrong and masks the passwords of URLs in it.
func TestRedactError(t *testing.T) {
	err := errors.New(`open store "postgres://kv:s3cret@db:5432/lenkwerk?sslmode=disable": connection refused`)
	got := redactError(err)
	if strings.Contains(got, "s3cret") {
		t.Errorf("redactError shows the password: %s", got)
	}
	if want := `open store "postgres://kv:xxxxx@db:5432/lenkwerk?sslmode=disable": connection refused`; got != want {
		t.Errorf("redactError = %s, want %s", got, want)
	}
	if got := redactError(errors.New(strings.Repeat("x ", 400))); len(got) > 300+len("…") {
		t.Errorf("redactError of a long error: %d bytes", len(got))
	}
}
