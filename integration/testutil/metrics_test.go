package testutil_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/integration/testutil"
)

func TestMetricValue(t *testing.T) {
	text := strings.Join([]string{
		"# HELP lenkwerk_agent_role role",
		"# TYPE lenkwerk_agent_role gauge",
		`lenkwerk_agent_role{role="active",store="a"} 0`,
		`lenkwerk_agent_role{role="standby",store="a"} 1`,
		`lenkwerk_agent_role_other{store="a"} 7`,
		`lenkwerk_agent_rows 3.5`,
		`lenkwerk_agent_long{store="` + strings.Repeat("x", 200<<10) + `"} 9`,
	}, "\n")
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
		ok     bool
	}{
		{"lenkwerk_agent_role", nil, 0, true},
		{"lenkwerk_agent_role", []string{`role="standby"`}, 1, true},
		{"lenkwerk_agent_role", []string{`role="standby"`, `store="b"`}, 0, false},
		{"lenkwerk_agent_role_other", nil, 7, true},
		{"lenkwerk_agent_rows", nil, 3.5, true},
		{"lenkwerk_agent_long", nil, 9, true}, // a line longer than bufio's 64 KiB default
		{"lenkwerk_agent", nil, 0, false},     // a prefix of names is no name
		{"missing", nil, 0, false},
	} {
		v, ok := testutil.MetricValue(text, c.name, c.labels...)
		if v != c.want || ok != c.ok {
			t.Errorf("MetricValue(%s, %q) = %v, %v; want %v, %v", c.name, c.labels, v, ok, c.want, c.ok)
		}
	}
}

func TestHTTPGet(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, r.URL.Path)
	}))
	defer srv.Close()
	if code, body := testutil.HTTPGet(t, srv.URL+"/readyz"); code != http.StatusTeapot || body != "/readyz" {
		t.Fatalf("HTTPGet = %d %q, want %d %q", code, body, http.StatusTeapot, "/readyz")
	}
}
