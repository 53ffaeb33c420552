package pgkv

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/jackc/pgx/v5"
)

// TestSyncNotificationNeedsTheTag: a durability notification vouches for
// a revision only with that revision's tag. Any session may LISTEN and
// see every payload, so neither the token in clear, nor a tag seen for
// another revision, nor another spelling of the number may vouch.
func TestSyncNotificationNeedsTheTag(t *testing.T) {
	const token = "0f8e2b4c-token"
	s := &Driver{syncToken: token}
	if rev, ok := s.syncNotification("7 " + syncTag(7, token)); !ok || rev != 7 {
		t.Errorf("the right tag: %d, %v; want 7, true", rev, ok)
	}
	for _, payload := range []string{
		"7 " + token,             // the token itself (the first design sent it)
		"8 " + syncTag(7, token), // a tag seen for another revision
		"07 " + syncTag(7, token),
		"+7 " + syncTag(7, token),
		"7 " + syncTag(7, "another store's token"),
		"7",
		"7 ",
		"",
		"x " + syncTag(7, token),
	} {
		if rev, ok := s.syncNotification(payload); ok {
			t.Errorf("payload %q vouched for revision %d", payload, rev)
		}
	}
	if _, ok := (&Driver{}).syncNotification("7 " + syncTag(7, "")); ok {
		t.Error("a driver that read no token accepted a notification")
	}
}

// TestServerSendsTheTag: kv_apply (a writer alone) and kv_sync notify with
// the tag the driver checks, never with the token.
func TestServerSendsTheTag(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbURL := pgtest.NewDatabase(t)
	cfg := DefaultConfig(dbURL)
	store, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var token string
	if err := conn.QueryRow(ctx, `SELECT sync_token FROM `+pgx.Identifier{cfg.Schema, "kv_meta"}.Sanitize()).Scan(&token); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{cfg.channel()}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	check := func(what string, rev int64) {
		t.Helper()
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("%s: no notification: %v", what, err)
		}
		if strings.Contains(n.Payload, token) {
			t.Errorf("%s: the payload %q carries the token", what, n.Payload)
		}
		if want := strconv.FormatInt(rev, 10) + " " + syncTag(rev, token); n.Payload != want {
			t.Errorf("%s: payload %q, want %q", what, n.Payload, want)
		}
	}
	rev, err := store.Put(ctx, "/synctag", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	check("kv_apply", rev)
	var head int64
	if err := conn.QueryRow(ctx, `SELECT `+pgx.Identifier{cfg.Schema}.Sanitize()+`.kv_sync($1)`, cfg.channel()).Scan(&head); err != nil {
		t.Fatal(err)
	}
	check("kv_sync", head)
}
