package pgjson

import (
	"fmt"
	"strings"
)

// SessionSettings returns the run-time parameters the replication
// connection must set (as startup parameters, e.g. pgconn.Config's
// RuntimeParams, or "?TimeZone=UTC&..." in the connection URL). pgoutput
// formats values in the walsender with that session's settings, and these
// make its text output what the encoder expects and what to_jsonb gives in
// a default session with TimeZone=UTC:
//
//   - TimeZone=UTC: timestamptz values are rendered in UTC ("+00:00").
//   - DateStyle=ISO, MDY: date/time output in ISO form (to_jsonb always
//     uses ISO/XSD for timestamps; dates and times are copied as output).
//   - IntervalStyle=postgres: the default interval output, as to_jsonb of
//     a default session gives it.
//   - extra_float_digits=1: shortest exact float output (the default), so
//     float numbers equal to_jsonb's.
//   - bytea_output=hex: the default bytea output.
//
// money output follows lc_monetary and reg* types follow search_path;
// neither is set here, so they match a session with the server's defaults.
func SessionSettings() map[string]string {
	return map[string]string{
		"TimeZone":           "UTC",
		"DateStyle":          "ISO, MDY",
		"IntervalStyle":      "postgres",
		"extra_float_digits": "1",
		"bytea_output":       "hex",
	}
}

// CheckParameterStatus verifies, from the parameters the server reports on
// a connection (pass (*pgconn.PgConn).ParameterStatus), that the session
// uses SessionSettings where the server reports them, and that the database
// encoding is UTF8 (values are copied into JSON as they are).
func CheckParameterStatus(status func(name string) string) error {
	checks := []struct {
		name string
		ok   func(string) bool
		want string
	}{
		{"TimeZone", func(v string) bool { return v == "UTC" }, "UTC"},
		{"DateStyle", func(v string) bool { return strings.HasPrefix(v, "ISO,") }, "ISO, MDY"},
		{"IntervalStyle", func(v string) bool { return v == "postgres" }, "postgres"},
		{"server_encoding", func(v string) bool { return v == "UTF8" }, "UTF8"},
	}
	for _, c := range checks {
		if v := status(c.name); !c.ok(v) {
			return fmt.Errorf("pgjson: session parameter %s is %q, want %q", c.name, v, c.want)
		}
	}
	return nil
}
