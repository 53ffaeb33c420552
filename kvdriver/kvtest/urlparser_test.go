package kvtest_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
)

// recorder is a testing.TB whose Fatalf records the failure and ends the
// goroutine, as testing.T's does.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func checkURLParser(parse func(string) error, rest, pw string) string {
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		kvtest.CheckURLParser(r, "x", parse, rest, pw, true)
	}()
	<-done
	return r.msg
}

// CheckURLParser must pass a careful parser and catch a leaking one and one
// whose errors do not wrap ErrInvalidURL.
func TestCheckURLParser(t *testing.T) {
	careful := func(raw string) error {
		if strings.Contains(raw, "bad") {
			return fmt.Errorf("%w: %s", kvdriver.ErrInvalidURL, kvdriver.Redact(raw))
		}
		return nil
	}
	leaky := func(raw string) error { return fmt.Errorf("%w: %s", kvdriver.ErrInvalidURL, raw) }
	unwrapped := func(string) error { return errors.New("no") }
	if msg := checkURLParser(careful, "h:1?bad=1", "s3cret-password"); msg != "" {
		t.Errorf("careful parser failed: %s", msg)
	}
	if msg := checkURLParser(leaky, "h:1", "s3cret-password"); !strings.Contains(msg, "shows the password") {
		t.Errorf("leaking parser: %q, want it caught", msg)
	}
	if msg := checkURLParser(unwrapped, "h:1", "s3cret-password"); !strings.Contains(msg, "not wrapping ErrInvalidURL") {
		t.Errorf("unwrapped error: %q, want it caught", msg)
	}
}
