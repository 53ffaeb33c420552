package main

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestParseStores(t *testing.T) {
	got, err := parseStores([]string{"etcd://h:2379", "postgres://u:p@h/db?a=b", "backup=mem://x"}, "lw_agent")
	if err != nil {
		t.Fatal(err)
	}
	want := []storeSpec{
		{"default", "etcd://h:2379", "lw_agent"},
		{"2", "postgres://u:p@h/db?a=b", "lw_agent_2"},
		{"backup", "mem://x", "lw_agent_backup"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("store %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if got, err := parseStores([]string{"main=mem://a"}, "s"); err != nil || got[0] != (storeSpec{"main", "mem://a", "s"}) {
		t.Errorf("named first store: %+v, %v", got, err)
	}
	for _, bad := range [][]string{
		{"mem://a", "b=mem://b", "b=mem://c"}, // name twice
		{"mem://a", "Bad=mem://b"},            // no NAME=: named by position
	} {
		specs, err := parseStores(bad, "s")
		if bad[1] == "Bad=mem://b" {
			// Upper case is no NAME=: the whole value is the URL (kvdriver
			// rejects it when opening).
			if err != nil || specs[1].url != "Bad=mem://b" {
				t.Errorf("%v: %+v, %v", bad, specs, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v: accepted, want an error", bad)
		}
	}
}

func TestLogFormat(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	for format, prefix := range map[string]string{"json": `{"time":`, "text": "time="} {
		var buf bytes.Buffer
		f := agentFlags{logLevel: "info", logFormat: format}
		if err := f.setLogger(&buf); err != nil {
			t.Fatal(err)
		}
		slog.Debug("hidden")
		slog.Info("shown", "k", "v")
		if out := buf.String(); !strings.HasPrefix(out, prefix) || strings.Contains(out, "hidden") || strings.Count(out, "\n") != 1 {
			t.Errorf("%s: %q", format, out)
		}
	}
	if err := (&agentFlags{logLevel: "info", logFormat: "xml"}).setLogger(io.Discard); err == nil {
		t.Error("--log-format xml accepted")
	}
	if err := (&agentFlags{logLevel: "loud", logFormat: "text"}).setLogger(io.Discard); err == nil {
		t.Error("--log-level loud accepted")
	}
}
