package main

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// `lenkwerk help CMD` shows the command's flags and an Environment section
// naming every variable its flags default from, and the password variables
// of the URLs it takes.
func TestHelpListsEnvironment(t *testing.T) {
	bin := lenkwerkBinary(t)
	for name, want := range map[string][]string{
		"agent":   {"LENKWERK_DATABASE_URL", "LENKWERK_KV_URL", "LENKWERK_SLOT", "LENKWERK_PREFIX", "LENKWERK_METRICS_ADDR", "PGPASSFILE", "LENKWERK_ETCD_PASSWORD", "GOMEMLIMIT"},
		"follow":  {"LENKWERK_FOLLOW_DATABASE_URL", "LENKWERK_KV_URL", "LENKWERK_PREFIX", "PGPASSFILE"},
		"kv":      {"LENKWERK_KV_URL", "LENKWERK_ETCD_PASSWORD"},
		"status":  {"LENKWERK_DATABASE_URL", "LENKWERK_KV_URL", "LENKWERK_SLOT", "LENKWERK_PREFIX"},
		"migrate": {"LENKWERK_DATABASE_URL", "PGPASSWORD"},
		"skip":    {"LENKWERK_KV_URL", "LENKWERK_SLOT", "LENKWERK_PREFIX"},
		"resync":  {"LENKWERK_DATABASE_URL", "LENKWERK_KV_URL"},
		"dev":     {"none read"},
		"version": {"none read"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, "help", name).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("lenkwerk help %s: %v\n%s", name, err, out)
			continue
		}
		usage, env, ok := strings.Cut(string(out), "\nEnvironment:\n")
		if !ok || !strings.Contains(usage, "Flags:") {
			t.Errorf("lenkwerk help %s: no Flags and Environment sections:\n%s", name, out)
			continue
		}
		for _, v := range want {
			if !strings.Contains(env, v) {
				t.Errorf("lenkwerk help %s: Environment does not list %s:\n%s", name, v, env)
			}
		}
		// Every variable a flag names is listed.
		for _, m := range regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)`).FindAllStringSubmatch(usage, -1) {
			if !strings.Contains(env, "  "+m[1]+" ") {
				t.Errorf("lenkwerk help %s: flag default %s not in Environment:\n%s", name, m[1], env)
			}
		}
	}
	if out, err := exec.Command(bin, "help", "nope").CombinedOutput(); err == nil || !strings.Contains(string(out), `unknown command "nope"`) {
		t.Errorf("lenkwerk help nope: %v\n%s; want an unknown command error", err, out)
	}
}
