package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/etcd"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
)

// harness runs the conformance suite on one embedded etcd server, which
// it can stop and start on the same data dir and port.
type harness struct{ srv *etcdtest.Server }

func (h *harness) MakeStore(ctx context.Context, t *testing.T) (*kvdriver.Store, error) {
	// Through the registry, as the agent opens it.
	return kvdriver.Open(ctx, h.srv.URL()+"?request-timeout=5s")
}

func (h *harness) Close() { h.srv.Close() }

func (h *harness) StopServer(ctx context.Context) error { return h.srv.Stop() }

func (h *harness) StartServer(ctx context.Context) error { return h.srv.Start(ctx) }

var _ kvtest.Restarter = (*harness)(nil)

func TestConformance(t *testing.T) {
	kvtest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kvtest.Harness, error) {
		return &harness{srv: etcdtest.New(t)}, nil
	})
}

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// and a password query parameter) never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	kvtest.FuzzURLParser(f, "etcd", func(raw string) error {
		_, err := etcd.ParseURL(raw)
		return err
	})
}

func TestParseURL(t *testing.T) {
	t.Setenv(etcd.PasswordEnv, "")
	pwFile := filepath.Join(t.TempDir(), "pw")
	for _, tc := range []struct {
		url  string
		want etcd.Config
	}{
		{"etcd://127.0.0.1:2379", etcd.Config{Endpoints: []string{"127.0.0.1:2379"}}},
		{"etcd://h1", etcd.Config{Endpoints: []string{"h1:2379"}}},
		{"etcd://h1:1,h2:2,h3:3/", etcd.Config{Endpoints: []string{"h1:1", "h2:2", "h3:3"}}},
		{"etcd://[::1]:2379", etcd.Config{Endpoints: []string{"[::1]:2379"}}},
		{"etcd://h:1?dial-timeout=2s&request-timeout=1m", etcd.Config{Endpoints: []string{"h:1"}, DialTimeout: 2 * time.Second, RequestTimeout: time.Minute}},
		{"etcd://h:1?ca-file=/ca.pem", etcd.Config{Endpoints: []string{"h:1"}, CAFile: "/ca.pem"}},
		{"etcd://h:1?ca-file=/ca.pem&cert-file=/c.pem&key-file=/k.pem", etcd.Config{Endpoints: []string{"h:1"}, CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}},
		{"etcd://h:1?tls=true", etcd.Config{Endpoints: []string{"h:1"}, TLS: true}},
		{"etcd://agent@h:1?password-file=" + pwFile, etcd.Config{Endpoints: []string{"h:1"}, Username: "agent", PasswordFile: pwFile}},
		{"etcd://h:1?username=agent&password-file=" + pwFile, etcd.Config{Endpoints: []string{"h:1"}, Username: "agent", PasswordFile: pwFile}},
		{"etcd://agent:s3cr3t@h:1", etcd.Config{Endpoints: []string{"h:1"}, Username: "agent", Password: "s3cr3t"}},
	} {
		got, err := etcd.ParseURL(tc.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tc.want) {
			t.Errorf("ParseURL(%q) =\n %+v, want\n %+v", tc.url, got, tc.want)
		}
	}
}

func TestParseURLPasswordFromEnv(t *testing.T) {
	t.Setenv(etcd.PasswordEnv, "from-env")
	c, err := etcd.ParseURL("etcd://agent@h:1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Password != "from-env" {
		t.Fatalf("password = %q, want the one from $%s", c.Password, etcd.PasswordEnv)
	}
	// No username: the environment is not consulted.
	if c, _ := etcd.ParseURL("etcd://h:1"); c.Password != "" {
		t.Fatalf("password set without a username")
	}
}

func TestParseURLErrors(t *testing.T) {
	const secret = "s3cr3t"
	for _, tc := range []struct{ url, wantInErr string }{
		{"etcd://agent:" + secret + "@h:1?bogus=1&other=2", "bogus, other"},
		{"etcd://agent:" + secret + "@h:1?insecure-skip-verify=true", "insecure-skip-verify"},
		{"etcd://agent:" + secret + "@h:1?server-name=x", "server-name"},
		{"etcd://agent:" + secret + "@h:1?password-file=/pw", "password given twice"},
		{"etcd://agent:" + secret + "@h:1?dial-timeout=soon", "dial-timeout"},
		{"etcd://agent:" + secret + "@h:1?request-timeout=-1s", "request-timeout"},
		{"etcd://agent:" + secret + "@h:1?cert-file=/c.pem", "cert-file and key-file"},
		{"etcd://agent:" + secret + "@h:1?tls=maybe", "tls"},
		{"etcd://agent:" + secret + "@h:1?tls=false&ca-file=/ca", "tls=false"},
		{"etcd://agent:" + secret + "@h:1/bagger", "path"},
		{"etcd://agent:" + secret + "@h:1,,h:2", "empty endpoint"},
		{"etcd://agent:" + secret + "@h:99999", "port"},
		{"etcd://:" + secret + "@h:1", "without username"},
		{"etcd://a:" + secret + "@h:1?username=b", "username given twice"},
		{"etcd://", "no endpoint"},
		{"http://h:1", "scheme"},
	} {
		_, err := etcd.ParseURL(tc.url)
		if err == nil {
			t.Errorf("ParseURL(%q) succeeded", tc.url)
			continue
		}
		if !errors.Is(err, kvdriver.ErrInvalidURL) {
			t.Errorf("ParseURL(%q) = %v, want ErrInvalidURL", tc.url, err)
		}
		if !strings.Contains(err.Error(), tc.wantInErr) {
			t.Errorf("ParseURL(%q) = %v, want it to mention %q", tc.url, err, tc.wantInErr)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("ParseURL(%q) error shows the password: %v", tc.url, err)
		}
	}
}

func TestOpenErrorsHidePassword(t *testing.T) {
	const secret = "s3cr3t"
	ctx := context.Background()
	port, err := etcdtest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{
		// Nobody listens there.
		fmt.Sprintf("etcd://agent:%s@127.0.0.1:%d?dial-timeout=200ms", secret, port[0]),
		"etcd://agent:" + secret + "@h:1?nope=1",
		"etcd://agent:" + secret + "@h:1,h:x",
	} {
		_, err := kvdriver.Open(ctx, u)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", kvdriver.Redact(u))
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Open error shows the password: %v", err)
		}
	}
}

func TestTLSFileErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-ca.pem")
	_, err := kvdriver.Open(ctx, "etcd://127.0.0.1:1?ca-file="+missing)
	if err == nil || !strings.Contains(err.Error(), "ca-file") || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open with a missing CA file = %v, want an error naming ca-file and the path, wrapping ErrNotExist", err)
	}
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = kvdriver.Open(ctx, "etcd://127.0.0.1:1?ca-file="+notPEM)
	if err == nil || !strings.Contains(err.Error(), notPEM) {
		t.Fatalf("Open with a CA file without certificates = %v, want an error naming it", err)
	}
}

func TestPasswordFileErrors(t *testing.T) {
	t.Setenv(etcd.PasswordEnv, "")
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "pw")
	_, err := kvdriver.Open(ctx, "etcd://agent@127.0.0.1:1?password-file="+missing)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open with a missing password file = %v, want ErrNotExist", err)
	}
	_, err = kvdriver.Open(ctx, "etcd://agent@127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), etcd.PasswordEnv) {
		t.Fatalf("Open with a user and no password = %v, want a hint at %s", err, etcd.PasswordEnv)
	}
}
