package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
)

// kvRun runs `lenkwerk kv args...` in-process and returns its stdout.
func kvRun(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := runKV(ctx, args, strings.NewReader(stdin), &out)
	return out.String(), err
}

func mustKV(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kvRun(t, "", args...)
	if err != nil {
		t.Fatalf("lenkwerk kv %q: %v", args, err)
	}
	return out
}

// memURL is a store private to the test, shared by its kv invocations.
// memRuns numbers memURL's stores: a named mem store lives as long as the
// process, so a test run again (-count) needs a fresh name.
var memRuns atomic.Int64

func memURL(t *testing.T) string {
	return fmt.Sprintf("mem://kv-test-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), memRuns.Add(1))
}

func TestKVGetPutDelLs(t *testing.T) {
	u := memURL(t)
	if got := mustKV(t, "--kv", u, "put", "/Index/1", `{"id": 1, "name": "a"}`); got != "2\n" {
		t.Errorf("put printed %q, want the revision 2 (a new store is at 1)", got)
	}
	mustKV(t, "--kv", u, "put", "/Index/10", `{"id":10}`)
	mustKV(t, "--kv", u, "put", "/IndexField/1", `"x"`)
	// Flags after the arguments, and a value read from stdin.
	if _, err := kvRun(t, "{\n  \"multi\": \"line\"\n}\n", "put", "/Config/a", "-", "--kv", u); err != nil {
		t.Fatalf("put from stdin: %v", err)
	}
	// "--" lets a value start with '-'.
	mustKV(t, "--kv", u, "put", "--", "/Config/neg", "-1")

	if got := mustKV(t, "--kv", u, "get", "/Index/1"); got != "{\"id\": 1, \"name\": \"a\"}\n" {
		t.Errorf("get = %q", got)
	}
	want := "/Index/1\t{\"id\":1,\"name\":\"a\"}\n/Index/10\t{\"id\":10}\n"
	if got := mustKV(t, "--kv", u, "ls", "/Index"); got != want {
		t.Errorf("ls /Index = %q, want %q", got, want)
	}
	all := mustKV(t, "--kv", u, "ls")
	if lines := strings.Split(strings.TrimSpace(all), "\n"); len(lines) != 5 || lines[0] != "/Config/a\t{\"multi\":\"line\"}" || lines[1] != "/Config/neg\t-1" {
		t.Errorf("ls = %q, want 5 one-line records, sorted", all)
	}
	if got := mustKV(t, "--kv", u, "del", "/Index/1"); got != "7\n" {
		t.Errorf("del printed %q, want the revision 7", got)
	}
	_, err := kvRun(t, "", "--kv", u, "get", "/Index/1")
	if !errors.Is(err, kvdriver.ErrNotFound) {
		t.Errorf("get after del: %v, want ErrNotFound", err)
	}
	if got := mustKV(t, "--kv", u, "ls", "/Nothing"); got != "" {
		t.Errorf("ls of an empty prefix = %q, want nothing", got)
	}
}

// A prefix with a trailing '/' (as etcdctl users type it) lists and
// watches what the prefix without it does; a key keeps its rules.
func TestKVTrailingSlashPrefix(t *testing.T) {
	u := memURL(t)
	mustKV(t, "--kv", u, "put", "/Index", `0`)      // rev 2
	mustKV(t, "--kv", u, "put", "/Index/1", `1`)    // rev 3
	mustKV(t, "--kv", u, "put", "/IndexField", `2`) // rev 4
	want := "/Index\t0\n/Index/1\t1\n"
	for _, p := range []string{"/Index", "/Index/"} {
		if got := mustKV(t, "--kv", u, "ls", p); got != want {
			t.Errorf("ls %s = %q, want %q", p, got, want)
		}
	}
	if got, want := mustKV(t, "--kv", u, "ls", "/"), want+"/IndexField\t2\n"; got != want {
		t.Errorf("ls / = %q, want %q", got, want)
	}
	w := startKVWatch(t, "--kv", u, "watch", "/Index/", "--from", "2")
	mustKV(t, "--kv", u, "put", "/IndexX", `8`)  // rev 5: outside
	mustKV(t, "--kv", u, "put", "/Index/2", `9`) // rev 6
	for _, want := range []string{"2\tput\t/Index\t0", "3\tput\t/Index/1\t1", "6\tput\t/Index/2\t9"} {
		if got := w.next(); got != want {
			t.Errorf("watch /Index/ line = %q, want %q", got, want)
		}
	}
	w.stop("watch /Index/")
}

func TestKVEnvURL(t *testing.T) {
	t.Setenv("LENKWERK_KV_URL", memURL(t))
	mustKV(t, "put", "/a", "1")
	if got := mustKV(t, "get", "/a"); got != "1\n" {
		t.Errorf("get with the URL from LENKWERK_KV_URL = %q", got)
	}
}

func TestKVBadInput(t *testing.T) {
	u := memURL(t)
	t.Setenv("LENKWERK_KV_URL", "")
	for _, c := range []struct {
		args []string
		want string // in the error
		is   error
	}{
		{[]string{"--kv", u}, "missing subcommand", errUsage},
		{[]string{"--kv", u, "cat", "/a"}, `unknown subcommand "cat"`, nil},
		{[]string{"--kv", u, "get"}, "get: 0 arguments, want 1", nil},
		{[]string{"--kv", u, "get", "/a", "/b"}, "get: 2 arguments, want 1", nil},
		{[]string{"--kv", u, "put", "/a"}, "usage: lenkwerk kv put KEY JSON", nil},
		{[]string{"--kv", u, "ls", "/a", "/b"}, "0 to 1", nil},
		{[]string{"--kv", u, "get", "a"}, "does not start with '/'", kvdriver.ErrInvalidKey},
		{[]string{"--kv", u, "put", "/a/", "1"}, "ends with '/'", kvdriver.ErrInvalidKey},
		{[]string{"--kv", u, "del", "/a//b"}, "empty segment", kvdriver.ErrInvalidKey},
		{[]string{"--kv", u, "ls", "Index"}, "does not start with '/'", kvdriver.ErrInvalidKey},
		{[]string{"--kv", u, "put", "/a", "{bad"}, "not valid JSON", kvdriver.ErrInvalidValue},
		{[]string{"--kv", u, "put", "/a", ""}, "empty value", kvdriver.ErrInvalidValue},
		{[]string{"get", "/a"}, "no store: set --kv URL or LENKWERK_KV_URL", nil},
		{[]string{"--kv", "nope://h", "get", "/a"}, `"nope"`, kvdriver.ErrUnsupportedScheme},
		{[]string{"--kv", "mem://x?bogus=1", "get", "/a"}, `unknown parameter "bogus"`, kvdriver.ErrInvalidURL},
		{[]string{"--kv", u, "get", "/a", "--from", "3"}, "--from is for watch only", nil},
		{[]string{"--kv", u, "watch", "--from", "-2"}, "a revision is positive", nil},
		{[]string{"--kv", u, "watch", "--from", "x"}, "invalid value", nil},
		{[]string{"--kv", u, "watch", "--from", "1"}, "use --from 2", nil},
		{[]string{"--kv", u, "--bogus", "ls"}, "flag provided but not defined", nil},
		{[]string{"--kv", "postgres://bob:s3cret@127.0.0.1:1/x?connect_timeout=1", "get", "/a"}, "", nil},
	} {
		_, err := kvRun(t, "", c.args...)
		if err == nil {
			t.Errorf("kv %q succeeded, want an error", c.args)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("kv %q: error %q does not say %q", c.args, err, c.want)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("kv %q: error %v does not wrap %v", c.args, err, c.is)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("kv %q: error %q shows the password", c.args, err)
		}
	}
}

func TestKVWatch(t *testing.T) {
	u := memURL(t)
	// A new store is at revision 1, the first write makes revision 2.
	mustKV(t, "--kv", u, "put", "/Index/0", `0`)        // rev 2
	mustKV(t, "--kv", u, "put", "/Index/1", `{"a": 1}`) // rev 3
	mustKV(t, "--kv", u, "put", "/Other", `2`)          // rev 4
	mustKV(t, "--kv", u, "put", "/Index/2", `3`)        // rev 5

	w := startKVWatch(t, "--kv", u, "watch", "/Index", "--from", "3")
	// --from 3 replays from revision 3 inclusive; /Other is outside the
	// prefix.
	for _, want := range []string{"3\tput\t/Index/1\t{\"a\":1}", "5\tput\t/Index/2\t3"} {
		if got := w.next(); got != want {
			t.Errorf("watch line = %q, want %q", got, want)
		}
	}
	// Live events come out while the watch runs: each line is flushed.
	mustKV(t, "--kv", u, "del", "/Index/1")
	if got, want := w.next(), "6\tdelete\t/Index/1"; got != want {
		t.Errorf("watch line = %q, want %q", got, want)
	}
	mustKV(t, "--kv", u, "put", "/Index/3", "{\n\"x\": [1,\n2]}")
	if got, want := w.next(), "7\tput\t/Index/3\t{\"x\":[1,2]}"; got != want {
		t.Errorf("watch line = %q, want %q", got, want)
	}
	// Interrupting (main cancels the context) ends it cleanly.
	w.stop("watch")
}

func TestKVWatchCompacted(t *testing.T) {
	u := memURL(t) + "?history=2"
	for i := 0; i < 5; i++ {
		mustKV(t, "--kv", u, "put", "/k", fmt.Sprint(i))
	}
	out, err := kvRun(t, "", "--kv", u, "watch", "--from", "2")
	if !errors.Is(err, kvdriver.ErrCompacted) || !strings.Contains(err.Error(), "later --from") {
		t.Errorf("watch from a compacted revision: %v, want ErrCompacted with a hint", err)
	}
	if out != "" {
		t.Errorf("watch from a compacted revision printed %q", out)
	}
}

// hostileKeys are keys and values that would break the one-line format or
// drive the terminal if printed raw, with the lines ls prints for them.
var hostileKeys = []struct{ key, value, line string }{
	{"/esc/\x1b[2J\x1b]0;owned\x07", `1`, `"/esc/\x1b[2J\x1b]0;owned\a"` + "\t1"},
	{"/tab/a\tb", `2`, `"/tab/a\tb"` + "\t2"},
	{"/nl/a\nb", `3`, `"/nl/a\nb"` + "\t3"},
	{"/c1/a\u009bb", `4`, `"/c1/a\u009bb"` + "\t4"},
	{"/bidi/\u202egpj.exe", `5`, `"/bidi/\u202egpj.exe"` + "\t5"},
	{"/plain/ä b", "\"v\u009b[31m\u202e\U000e0001\"", "/plain/ä b\t\"v\\u009b[31m\\u202e\\udb40\\udc01\""},
	{"/value/esc", `"\u001b[2J\n\t"`, "/value/esc\t\"\\u001b[2J\\n\\t\""},
}

// ls and watch print keys with control characters quoted and values with
// such characters escaped: one record per line, nothing raw for the
// terminal.
func TestKVControlCharacters(t *testing.T) {
	u := memURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := kvdriver.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var lsWant, watchWant []string
	for i, h := range hostileKeys {
		if _, err := store.Put(ctx, h.key, []byte(h.value)); err != nil {
			t.Fatalf("put %q: %v", h.key, err)
		}
		lsWant = append(lsWant, h.line)
		watchWant = append(watchWant, fmt.Sprintf("%d\tput\t%s", i+2, h.line))
	}
	last := len(hostileKeys) + 2
	if _, err := store.Delete(ctx, hostileKeys[0].key); err != nil {
		t.Fatal(err)
	}
	watchWant = append(watchWant, fmt.Sprintf("%d\tdelete\t%s", last, strings.Split(hostileKeys[0].line, "\t")[0]))

	out := mustKV(t, "--kv", u, "ls", "/")
	checkLines(t, "ls", out, lsWant[1:], true) // the first key is deleted

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var buf testutil.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runKV(wctx, []string{"--kv", u, "watch", "/", "--from", "2"}, strings.NewReader(""), &buf)
	}()
	testutil.WaitFor(t, "every watch line", 20*time.Second, func() bool { return strings.Count(buf.String(), "\n") >= len(watchWant) })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkLines(t, "watch", buf.String(), watchWant, false)
}

// checkLines compares output lines with want (sorted first if sorted)
// and checks that no line holds a raw control character.
func checkLines(t *testing.T, what, out string, want []string, sorted bool) {
	t.Helper()
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if sorted {
		sort.Strings(got)
		sort.Strings(want)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s printed\n%q\nwant\n%q", what, got, want)
	}
	for _, l := range got {
		for _, r := range l {
			if r != '\t' && !unicode.IsPrint(r) {
				t.Errorf("%s line %q holds %U raw", what, l, r)
			}
		}
	}
}

// lenkwerk dev's tree prints keys and values like ls and watch.
func TestShowTreeControlCharacters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := kvdriver.Open(ctx, memURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	half := len(hostileKeys) / 2
	var want []string
	for _, h := range hostileKeys[:half] {
		if _, err := store.Put(ctx, h.key, []byte(h.value)); err != nil {
			t.Fatal(err)
		}
		want = append(want, h.line)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var buf testutil.Buffer
	done := make(chan error, 1)
	go func() { done <- showTree(sctx, store, &buf, "stop") }()
	testutil.WaitFor(t, "the tree", 20*time.Second, func() bool { return strings.Contains(buf.String(), "Watching / for changes") })
	for i, h := range hostileKeys[half:] {
		if _, err := store.Put(ctx, h.key, []byte(h.value)); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("%d\tput\t%s", half+2+i, h.line))
	}
	testutil.WaitFor(t, "every change", 20*time.Second, func() bool { return strings.Count(buf.String(), "\tput\t") == len(hostileKeys)-half })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "\t") {
			got = append(got, l)
		}
	}
	checkLines(t, "dev tree", strings.Join(got, "\n"), want, true)
}

// kvWatch is a `lenkwerk kv ... watch` running in the background.
type kvWatch struct {
	t      *testing.T
	lines  chan string // its output lines; closed at its end
	cancel context.CancelFunc
	done   chan error
}

// startKVWatch runs `lenkwerk kv` with args (a watch) until w.stop or the
// end of the test.
func startKVWatch(t *testing.T, args ...string) *kvWatch {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &kvWatch{t: t, lines: make(chan string, 16), cancel: cancel, done: make(chan error, 1)}
	pr, pw := io.Pipe()
	go func() {
		w.done <- runKV(ctx, args, strings.NewReader(""), pw)
		pw.Close()
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	return w
}

// next is the watch's next output line ("<EOF>" once it has ended); the
// test fails when none comes within 10 s.
func (w *kvWatch) next() string {
	w.t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			return "<EOF>"
		}
		return l
	case <-time.After(10 * time.Second):
		w.t.Fatalf("no watch line within 10s")
		return ""
	}
}

// stop interrupts the watch (as main cancels the context) and checks that
// it ends cleanly; what names it in the error.
func (w *kvWatch) stop(what string) {
	w.t.Helper()
	w.cancel()
	go func() {
		for range w.lines { // whatever it still writes
		}
	}()
	watchEnded(w.t, w.done, what)
}

// watchEnded checks that a watch command whose context was cancelled
// ended cleanly (done gets its error) within 10s.
func watchEnded(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s after interrupt: %v, want nil", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end within 10s of its context")
	}
}
