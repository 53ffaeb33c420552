package etcd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestAuth enables etcd auth and opens the store with the password from a
// file, from the environment and from the URL; a wrong password fails at
// Open with an error that does not show it.
func TestAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := etcdtest.New(t)
	const pw = "root-s3cr3t"
	c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.UserAdd(ctx, "root", pw); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}

	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL(), "etcd://")
	t.Setenv("LENKWERK_ETCD_PASSWORD", pw)
	for _, u := range []string{
		"etcd://root@" + host + "?password-file=" + pwFile,
		"etcd://" + host + "?username=root", // password from the environment
		"etcd://root:" + pw + "@" + host,
	} {
		s, err := kvdriver.Open(ctx, u)
		if err != nil {
			t.Fatalf("Open(%s): %v", kvdriver.Redact(u), err)
		}
		if _, err := s.Put(ctx, "/auth/k", []byte(`1`)); err != nil {
			t.Errorf("Put through %s: %v", kvdriver.Redact(u), err)
		}
		s.Close()
	}

	// A user allowed only /auth/ whose watch elsewhere is refused: the
	// watch ends with the error instead of retrying forever.
	rootClient, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Username: "root", Password: pw, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer rootClient.Close()
	for _, step := range []func() error{
		func() error { _, err := rootClient.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := rootClient.RoleGrantPermission(ctx, "reader", "/auth/", clientv3.GetPrefixRangeEnd("/auth/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := rootClient.UserAdd(ctx, "reader", "reader-pw"); return err },
		func() error { _, err := rootClient.UserGrantRole(ctx, "reader", "reader"); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("LENKWERK_ETCD_PASSWORD", "reader-pw")
	reader, err := kvdriver.Open(ctx, "etcd://reader@"+host)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err := reader.Put(ctx, "/auth/r", []byte(`1`)); err != nil {
		t.Fatalf("reader Put inside its prefix: %v", err)
	}
	select {
	case r := <-reader.Watch(ctx, "/other", 1):
		if r.Err == nil {
			t.Fatalf("watch outside the granted prefix: %v, want permission denied", r)
		}
		t.Logf("watch outside the granted prefix: %v", r.Err)
	case <-time.After(15 * time.Second):
		t.Fatal("watch outside the granted prefix neither failed nor ended")
	}

	t.Setenv("LENKWERK_ETCD_PASSWORD", "")
	const wrong = "wrong-pa55word"
	for _, u := range []string{
		"etcd://root:" + wrong + "@" + host,
		"etcd://root@" + host, // no password at all
	} {
		_, err = kvdriver.Open(ctx, u)
		if err == nil {
			t.Fatalf("Open(%s) succeeded", kvdriver.Redact(u))
		}
		t.Logf("Open(%s): %v", kvdriver.Redact(u), err)
		if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), pw) {
			t.Errorf("Open error shows a password: %v", err)
		}
	}
	if !errors.Is(err, kvdriver.ErrInvalidURL) {
		t.Errorf("Open without a password = %v, want ErrInvalidURL", err)
	}
}
