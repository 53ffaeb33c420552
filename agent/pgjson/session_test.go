package pgjson_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/agent/pgjson"
)

// TestWalsenderHonoursStartupParameters proves that pgoutput formats values
// with the run-time parameters given at connection startup of the
// replication connection: the same row streamed through two slots, one with
// SessionSettings and one with a different value for each of them, comes
// out as a regular session with the same parameters prints it, and differs
// in every column.
func TestWalsenderHonoursStartupParameters(t *testing.T) {
	ctx := context.Background()
	url, ref := newDatabase(t, ctx, nil, `CREATE TABLE v (ts timestamptz, d date, f float8, i interval, b bytea);
		CREATE PUBLICATION p FOR TABLE v`)
	other := map[string]string{
		"TimeZone":           "Asia/Kolkata",
		"DateStyle":          "German, DMY",
		"IntervalStyle":      "iso_8601",
		"extra_float_digits": "0",
		"bytea_output":       "escape",
	}
	if got, want := len(other), len(pgjson.SessionSettings()); got != want {
		t.Fatalf("test covers %d settings, SessionSettings has %d", got, want)
	}
	ours := replConn(t, ctx, url, pgjson.SessionSettings(), "ours")
	theirs := replConn(t, ctx, url, other, "theirs")
	if err := pgjson.CheckParameterStatus(theirs.ParameterStatus); err == nil {
		t.Fatal("CheckParameterStatus accepts TimeZone=Asia/Kolkata, DateStyle=German")
	}
	if _, err := ref.Exec(ctx, `INSERT INTO v VALUES ('2024-01-02 03:04:05.5+00', '2024-01-31', 0.1::float8 + 0.2::float8, '1 day 02:00', 'a\\b')`); err != nil {
		t.Fatal(err)
	}
	const cols = "ts::text, d::text, f::text, i::text, b::text"
	texts := func(params map[string]string) []string {
		conn := connect(t, ctx, url, params)
		var a, b, c, d, e string
		if err := conn.QueryRow(ctx, "SELECT "+cols+" FROM v").Scan(&a, &b, &c, &d, &e); err != nil {
			t.Fatal(err)
		}
		return []string{a, b, c, d, e}
	}
	gotOurs := colTexts(stream(t, ctx, ours, "ours", "p", 1)[0])
	gotTheirs := colTexts(stream(t, ctx, theirs, "theirs", "p", 1)[0])
	wantOurs, wantTheirs := texts(pgjson.SessionSettings()), texts(other)
	if strings.Join(gotOurs, "|") != strings.Join(wantOurs, "|") {
		t.Fatalf("with SessionSettings pgoutput sent %q, the session prints %q", gotOurs, wantOurs)
	}
	if strings.Join(gotTheirs, "|") != strings.Join(wantTheirs, "|") {
		t.Fatalf("with other settings pgoutput sent %q, the session prints %q", gotTheirs, wantTheirs)
	}
	for i := range gotOurs {
		if gotOurs[i] == gotTheirs[i] {
			t.Errorf("column %d is %q under both settings: the test does not show the parameter is honoured", i, gotOurs[i])
		}
	}
	t.Logf("SessionSettings: %q; other settings: %q", gotOurs, gotTheirs)
}
