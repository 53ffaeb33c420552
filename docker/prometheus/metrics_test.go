// The shipped rules and dashboard use only what a live agent exports.

package prometheus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/bagger/lenkwerk/integration/harness"
)

// targetLabels are added by Prometheus to every scraped series: rules may
// group by them though /metrics does not have them.
var targetLabels = []string{"instance", "job"}

func TestRulesAndDashboardUseRealMetrics(t *testing.T) {
	exprs := append(ruleExprs(t), dashboardExprs(t)...)
	if len(exprs) < 10 {
		t.Fatalf("found only %d expressions in the rules and the dashboard", len(exprs))
	}
	series := liveSeries(t)

	for _, e := range exprs {
		uses := parseUses(e.expr)
		if len(uses.metrics) == 0 {
			t.Errorf("%s: no lenkwerk metric in %q", e.where, e.expr)
			continue
		}
		var known []string // labels of the expression's metrics
		for _, m := range uses.metrics {
			sets, ok := series[m.name]
			if !ok {
				t.Errorf("%s: metric %s is not in the agent's /metrics", e.where, m.name)
				continue
			}
			for _, mt := range m.matchers {
				values := labelValues(sets, mt.label)
				if values == nil {
					t.Errorf("%s: %s has no label %q", e.where, m.name, mt.label)
					continue
				}
				for _, v := range mt.values {
					if !slices.Contains(values, v) {
						t.Errorf("%s: %s{%s=%q}: no such series (values: %q)", e.where, m.name, mt.label, v, values)
					}
				}
			}
			for l := range sets[0] {
				known = append(known, l)
			}
		}
		for _, l := range uses.grouping {
			if !slices.Contains(known, l) && !slices.Contains(targetLabels, l) {
				t.Errorf("%s: groups by %q, a label none of its metrics has (%q)", e.where, l, known)
			}
		}
	}
}

type expr struct{ where, expr string }

func ruleExprs(t *testing.T) []expr {
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	decodeFile(t, "lenkwerk.rules.yaml", yaml.Unmarshal, &f)
	var out []expr
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, expr{"rule " + r.Alert + r.Record, r.Expr})
		}
	}
	return out
}

// decodeFile reads the file at path into v with unmarshal (YAML or JSON).
func decodeFile(t *testing.T, path string, unmarshal func([]byte, any) error, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func dashboardExprs(t *testing.T) []expr {
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name       string
				Definition string
			}
		}
	}
	decodeFile(t, "../grafana/lenkwerk-dashboard.json", json.Unmarshal, &d)
	var out []expr
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, expr{"panel " + p.Title, tg.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			out = append(out, expr{"variable " + v.Name, v.Definition})
		}
	}
	return out
}

// uses is what one expression refers to.
type uses struct {
	metrics  []metricUse
	grouping []string // by (...), without (...), label_values(…, label)
}

type metricUse struct {
	name     string
	matchers []matcher
}

// matcher is label="v" or label=~"a|b" (values: the literal alternatives;
// none when the value is a pattern or a dashboard variable).
type matcher struct {
	label  string
	values []string
}

var (
	metricRe   = regexp.MustCompile(`\b(lenkwerk_agent_[a-z0-9_]+)(\{[^}]*\})?`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	groupingRe = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	valuesRe   = regexp.MustCompile(`label_values\([^,]+,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	literalRe  = regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)
)

// parseUses finds the metrics, matchers and grouping labels of a PromQL
// expression. Not a PromQL parser: enough for the shipped rules and
// dashboard, whose expressions name lenkwerk_agent_ metrics directly.
func parseUses(e string) uses {
	var u uses
	for _, m := range metricRe.FindAllStringSubmatch(e, -1) {
		mu := metricUse{name: m[1]}
		for _, mm := range matcherRe.FindAllStringSubmatch(m[2], -1) {
			mt := matcher{label: mm[1]}
			if (mm[2] == "=" || mm[2] == "=~") && literalRe.MatchString(mm[3]) {
				mt.values = strings.Split(mm[3], "|")
			}
			mu.matchers = append(mu.matchers, mt)
		}
		u.metrics = append(u.metrics, mu)
	}
	for _, g := range groupingRe.FindAllStringSubmatch(e, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				u.grouping = append(u.grouping, l)
			}
		}
	}
	for _, v := range valuesRe.FindAllStringSubmatch(e, -1) {
		u.grouping = append(u.grouping, v[1])
	}
	return u
}

// labelValues returns the values label has among sets, nil when no
// series has it.
func labelValues(sets []map[string]string, label string) []string {
	var out []string
	for _, s := range sets {
		if v, ok := s[label]; ok && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// liveSeries runs an agent (real PostgreSQL and etcd, the lenkwerk
// binary) with --metrics-addr and returns its /metrics: each metric name
// (histograms as name_bucket, name_sum, name_count) with its series'
// labels.
func liveSeries(t *testing.T) map[string][]map[string]string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := harness.Start(t, harness.WithBackend(harness.Local), harness.WithAgentArgs("--metrics-addr", addr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A transaction, so the histograms have observations.
	conn, err := pgx.Connect(ctx, s.ConfigURL())
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `SELECT storage.save_config('metrics_test', '1')`)
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	var text string
	for {
		text, err = get(ctx, "http://"+addr+"/metrics")
		if err == nil && strings.Contains(text, "lenkwerk_agent_apply_latency_seconds_count") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("/metrics of the agent at %s: %v\n%s", addr, err, text)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return parseExposition(text)
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return string(b), err
}

var labelRe = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// parseExposition reads the Prometheus text format: name{labels} value.
func parseExposition(text string) map[string][]map[string]string {
	out := map[string][]map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		labels := map[string]string{}
		if strings.HasPrefix(rest, "{") {
			if j := strings.LastIndexByte(rest, '}'); j > 0 {
				for _, m := range labelRe.FindAllStringSubmatch(rest[1:j], -1) {
					labels[m[1]] = m[2]
				}
			}
		}
		out[name] = append(out[name], labels)
	}
	return out
}
