package kvdriver_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/kvdriver"
)

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"etcd://127.0.0.1:2379", "etcd://127.0.0.1:2379"},
		{"mem://", "mem://"},
		{"mem://name?history=10", "mem://name?history=10"},
		{"postgres://bob:s3cret@db:5432/lw?sslmode=verify-full", "postgres://bob:xxxxx@db:5432/lw?sslmode=verify-full"},
		{"postgres://bob@db/lw", "postgres://bob@db/lw"},
		{"etcd://h:2379?username=root&password=s3cret", "etcd://h:2379?password=xxxxx&username=root"},
		{"etcd://h:2379?password-file=/run/secrets/s3cret", "etcd://h:2379?password-file=xxxxx"},
		{"postgres://db/lw?sslpassword=s3cret&PASSWORD=s3cret", "postgres://db/lw?PASSWORD=xxxxx&sslpassword=xxxxx"},
		{"etcd://h?token=s3cret&client_secret=s3cret", "etcd://h?client_secret=xxxxx&token=xxxxx"},
		{"etcd://h?password=s3cret&password=s3cret2", "etcd://h?password=xxxxx"},
		{"etcd://h?password=s3;cret", "etcd://h?xxxxx"},
		{"etcd://h#password=s3cret", "etcd://h#xxxxx"},
		{"bob:s3cret@db", "bob:xxxxx@db"},
		{"host=db user=bob password=s3cret dbname=lw", "host=db user=bob password=xxxxx dbname=lw"},
		{"host=db password = 's3 cret\\' x' dbname=lw", "host=db password = xxxxx dbname=lw"},
		{"postgres://bob:s3%zzcret@db", "<unparseable URL>"},
		{"://s3cret", "<unparseable URL>"},
	} {
		got := kvdriver.Redact(c.in)
		if got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(got, "s3") {
			t.Errorf("Redact(%q) = %q still holds the secret", c.in, got)
		}
	}
}

func TestConfigOpener(t *testing.T) {
	errBad := errors.New("bad URL")
	o := kvdriver.ConfigOpener(func(u *url.URL) (string, error) {
		if u.Host == "bad" {
			return "", errBad
		}
		return u.Host, nil
	}, func(ctx context.Context, host string) (*kvdriver.Store, error) {
		return nil, errors.New("open " + host)
	})
	if _, err := o.OpenStore(context.Background(), &url.URL{Scheme: "x", Host: "bad"}); err != errBad {
		t.Errorf("OpenStore with a URL parse refuses: %v, want parse's error as it is", err)
	}
	if _, err := o.OpenStore(context.Background(), &url.URL{Scheme: "x", Host: "h"}); err == nil || err.Error() != "open h" {
		t.Errorf("OpenStore: %v, want open's error for the parsed configuration", err)
	}
}

func TestOpen(t *testing.T) {
	kvdriver.Register("kvdriver-test", kvdriver.OpenerFunc(func(ctx context.Context, u *url.URL) (*kvdriver.Store, error) {
		return nil, errors.New("refused " + kvdriver.Redact(u.String()))
	}))
	if s := kvdriver.Schemes(); !strings.Contains(strings.Join(s, ","), "kvdriver-test") {
		t.Errorf("Schemes() = %v, want kvdriver-test in it", s)
	}
	_, err := kvdriver.Open(context.Background(), "nope://bob:s3cret@h")
	if !errors.Is(err, kvdriver.ErrUnsupportedScheme) || !strings.Contains(err.Error(), `"nope"`) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open of an unknown scheme: %v, want ErrUnsupportedScheme naming it, without the password", err)
	}
	_, err = kvdriver.Open(context.Background(), "kvdriver-test://bob:s3cret@h")
	if err == nil || !strings.Contains(err.Error(), "open kvdriver-test store") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open with a failing driver: %v, want the driver's error, without the password", err)
	}
	_, err = kvdriver.Open(context.Background(), "kvdriver-test://bob:s3cret@h/%zz")
	if !errors.Is(err, kvdriver.ErrInvalidURL) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open of a bad URL: %v, want ErrInvalidURL without the password", err)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("Register twice did not panic")
		}
	}()
	kvdriver.Register("kvdriver-test", kvdriver.OpenerFunc(nil))
}
