package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/bagger/lenkwerk/kvdriver"
)

const kvSynopsis = `kv [--kv URL] get KEY | put KEY JSON|- | del KEY | ls [PREFIX] | watch [PREFIX] [--from REV]

Reads, writes and watches the key-value store (--kv, env LENKWERK_KV_URL:
etcd://host:port, postgres://…, mem://name).

  get KEY          print KEY's value
  put KEY JSON     set KEY to the JSON document (- reads it from stdin); prints the new revision
  del KEY          delete KEY (absent is fine); prints the store revision
  ls [PREFIX]      print every key at or below PREFIX (default /), one "KEY<TAB>VALUE" line each
  watch [PREFIX]   print every change at or below PREFIX until interrupted, one line per event:
                     REV<TAB>put<TAB>KEY<TAB>VALUE
                     REV<TAB>delete<TAB>KEY
                   --from REV starts at revision REV (inclusive, REV >= 2), replaying
                   history; without it, from now

Values in ls and watch lines are compact JSON, so a line is one record.
A key holding a tab, newline or other non-printing character is printed
quoted ("/a\tb", Go syntax; keys never start with a quote), and such
characters in values are \u-escaped: nothing stored reaches the terminal
as an escape sequence.
Flags may come before or after the arguments; "--" ends the flags (for a
JSON value like -1).`

func init() {
	register("kv", "get, put, delete, list and watch keys in the store", func(ctx context.Context, args []string) error {
		return runKV(ctx, args, os.Stdin, os.Stdout)
	})
}

// runKV parses the kv command line, opens the store and runs the
// subcommand, writing its output to stdout.
func runKV(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := newFlagSet("kv", kvSynopsis)
	kvURL := fs.String("kv", envOr("LENKWERK_KV_URL", ""), "key-value store `URL` (env LENKWERK_KV_URL)")
	from := fs.Int64("from", 0, "watch: start at revision `REV` (inclusive); 0 means from now")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return fmt.Errorf("missing subcommand (get, put, del, ls, watch): %w", errUsage)
	}
	sub, pos := pos[0], pos[1:]
	want := map[string][2]int{"get": {1, 1}, "put": {2, 2}, "del": {1, 1}, "ls": {0, 1}, "watch": {0, 1}}
	n, ok := want[sub]
	if !ok {
		return fmt.Errorf("unknown subcommand %q (want get, put, del, ls or watch)", sub)
	}
	if len(pos) < n[0] || len(pos) > n[1] {
		return fmt.Errorf("%s: %d arguments, want %s (usage: lenkwerk %s)", sub, len(pos), kvArity(n), kvUsageLine(sub))
	}
	if *from != 0 && sub != "watch" {
		return fmt.Errorf("%s: --from is for watch only", sub)
	}
	if *from < 0 {
		return fmt.Errorf("watch: --from %d: a revision is positive", *from)
	}
	if *from == 1 {
		// Watch's afterRev 0 means "from now": there is no way to ask the
		// store API for the whole history.
		return errors.New("watch: --from 1 would replay the whole history, which the store cannot be asked for; use --from 2, or 'ls' for the current state")
	}
	if *kvURL == "" {
		return errors.New("no store: set --kv URL or LENKWERK_KV_URL")
	}
	var value []byte
	if sub == "put" {
		if value, err = kvValue(pos[1], stdin); err != nil {
			return err
		}
	}

	store, err := kvdriver.Open(ctx, *kvURL)
	if err != nil {
		return err // kvdriver.Open redacts the URL
	}
	defer store.Close()
	k := &kvCommand{store: store, out: stdout}
	switch sub {
	case "get":
		return k.get(ctx, pos[0])
	case "put":
		return k.put(ctx, pos[0], value)
	case "del":
		return k.del(ctx, pos[0])
	case "ls":
		return k.ls(ctx, optArg(pos, "/"))
	default:
		return k.watch(ctx, optArg(pos, "/"), *from)
	}
}

// kvCommand runs the kv subcommands against a store.
type kvCommand struct {
	store *kvdriver.Store
	out   io.Writer
}

func (k *kvCommand) get(ctx context.Context, key string) error {
	kv, err := k.store.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	_, err = fmt.Fprintf(k.out, "%s\n", kv.Value)
	return err
}

func (k *kvCommand) put(ctx context.Context, key string, value []byte) error {
	rev, err := k.store.Put(ctx, key, value)
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	_, err = fmt.Fprintln(k.out, rev)
	return err
}

func (k *kvCommand) del(ctx context.Context, key string) error {
	rev, err := k.store.Delete(ctx, key)
	if err != nil {
		return fmt.Errorf("del: %w", err)
	}
	_, err = fmt.Fprintln(k.out, rev)
	return err
}

func (k *kvCommand) ls(ctx context.Context, prefix string) error {
	kvs, _, err := k.store.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("ls: %w", err)
	}
	w := bufio.NewWriter(k.out)
	for _, kv := range kvs {
		fmt.Fprintf(w, "%s\t%s\n", oneKey(kv.Key), oneLine(kv.Value))
	}
	return w.Flush()
}

// watch prints events until ctx ends (a clean exit) or the watch fails.
// Each response is flushed at once, so a pipe reader sees it.
func (k *kvCommand) watch(ctx context.Context, prefix string, from int64) error {
	after := int64(0) // from now
	if from > 1 {
		after = from - 1
	}
	w := bufio.NewWriter(k.out)
	for resp := range k.store.Watch(ctx, prefix, after) {
		for _, ev := range resp.Events {
			if ev.Type == kvdriver.OpPut {
				fmt.Fprintf(w, "%d\tput\t%s\t%s\n", ev.Revision, oneKey(ev.Key), oneLine(ev.Value))
			} else {
				fmt.Fprintf(w, "%d\t%s\t%s\n", ev.Revision, ev.Type, oneKey(ev.Key))
			}
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if resp.Err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(resp.Err, kvdriver.ErrCompacted) {
				return fmt.Errorf("watch: %w (start at a later --from, or without it; 'lenkwerk kv ls' shows the current state)", resp.Err)
			}
			return fmt.Errorf("watch: %w", resp.Err)
		}
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

// oneLine returns value as compact JSON, so it fits one output line, with
// every character a terminal would not print as text (control characters,
// bidirectional overrides, line separators) \u-escaped: stored data never
// reaches the terminal as escape sequences.
func oneLine(value []byte) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, value); err != nil || !utf8.Valid(b.Bytes()) {
		// Not JSON (a store written by someone else): quote it rather
		// than let a newline break the line format.
		return []byte(strconv.Quote(string(value)))
	}
	out := b.Bytes()
	if printable(string(out)) {
		return out
	}
	// Compact JSON holds no raw ASCII control character, and any other
	// character is inside a string, where \u escapes mean the same.
	var e bytes.Buffer
	for _, r := range string(out) {
		if r < utf8.RuneSelf || unicode.IsPrint(r) {
			e.WriteRune(r)
			continue
		}
		if r1, r2 := utf16.EncodeRune(r); r1 != unicode.ReplacementChar {
			fmt.Fprintf(&e, `\u%04x\u%04x`, r1, r2)
		} else {
			fmt.Fprintf(&e, `\u%04x`, r)
		}
	}
	return e.Bytes()
}

// oneKey returns key for a one-line record: as it is when it starts with
// '/' and holds only printable characters (spaces included), else quoted
// with strconv.Quote (a key never starts with '"', so the two cannot be
// confused), so a tab, newline or terminal escape in a key can neither
// break the line format nor reach the terminal.
func oneKey(key string) string {
	if strings.HasPrefix(key, "/") && printable(key) {
		return key
	}
	return strconv.Quote(key)
}

// printable reports valid UTF-8 of printable characters and spaces only.
func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// kvValue returns the JSON document of a put: the argument, or stdin for
// "-". It is checked here so a bad document fails before connecting.
func kvValue(arg string, stdin io.Reader) ([]byte, error) {
	v := []byte(arg)
	if arg == "-" {
		var err error
		if v, err = io.ReadAll(stdin); err != nil {
			return nil, fmt.Errorf("put: read value from stdin: %w", err)
		}
		v = bytes.TrimSpace(v)
	}
	if err := kvdriver.ValidateValue(v); err != nil {
		return nil, fmt.Errorf("put: %w (quote the document for the shell: '{\"a\": 1}')", err)
	}
	return v, nil
}

// parseInterleaved parses flags anywhere among the arguments and returns
// the positional ones; after "--" everything is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func optArg(pos []string, def string) string {
	if len(pos) > 0 {
		return pos[0]
	}
	return def
}

func kvArity(n [2]int) string {
	if n[0] == n[1] {
		return strconv.Itoa(n[0])
	}
	return fmt.Sprintf("%d to %d", n[0], n[1])
}

func kvUsageLine(sub string) string {
	for _, l := range strings.Split(strings.SplitN(kvSynopsis, "\n", 2)[0], " | ") {
		l = strings.TrimPrefix(l, "kv [--kv URL] ")
		if strings.HasPrefix(l, sub+" ") || l == sub {
			return "kv " + l
		}
	}
	return "kv"
}
