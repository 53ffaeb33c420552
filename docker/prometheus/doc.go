// Package prometheus holds no code: its directory ships the Prometheus
// alerting rules for Lenkwerk agents (lenkwerk.rules.yaml, unit-tested by
// lenkwerk.rules.test.yaml with promtool in `make rules`), and its test
// checks the rules and the Grafana dashboard (../grafana) against a live
// agent's /metrics, so that a renamed metric or label breaks the build,
// not the pager.
package prometheus
