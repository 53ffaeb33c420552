package secure

import (
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdPrefixRole: the agent's etcd user, by password or by its
// certificate's CN alone (etcd --client-cert-auth takes the CN as the user
// when no password is given), reads and writes the Bagger range and
// nothing else; a certificate whose CN is no etcd user gets nothing.
func TestEtcdPrefixRole(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := newPKI(t)
	etcd := startEtcd(t, p)
	root, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAdmin, "root", rootPass))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Put(ctx, "/Config/outside", []byte(`"root's"`)); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, url string }{
		{"password", etcd.url(t, p.etcdAgent, etcdUser, agentPass)},
		{"certificate CN", etcd.url(t, p.etcdAgent, "", "")},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			s, err := kvdriver.Open(ctx, tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for _, key := range []string{prefix + "/Config/k", prefix + "/.lenkwerk/checkpoint/lw_agent", prefix} {
				if _, err := s.Put(ctx, key, []byte(`1`)); err != nil {
					t.Errorf("Put %s inside the range: %v", key, err)
				}
			}
			if _, _, err := s.List(ctx, prefix); err != nil {
				t.Errorf("List %s: %v", prefix, err)
			}
			for _, key := range []string{"/Config/k", "/baggerX/k", "/bagge"} {
				if _, err := s.Put(ctx, key, []byte(`1`)); err == nil {
					t.Errorf("Put %s outside the range succeeded", key)
				} else if !strings.Contains(err.Error(), "permission denied") {
					t.Errorf("Put %s: %v, want permission denied", key, err)
				}
			}
			if _, err := s.Delete(ctx, "/Config/outside"); err == nil {
				t.Error("Delete outside the range succeeded")
			}
			if _, err := s.Get(ctx, "/Config/outside"); err == nil {
				t.Error("Get outside the range succeeded")
			}
			if _, _, err := s.List(ctx, "/"); err == nil {
				t.Error("List / succeeded")
			}
		})
	}

	// The prefix form on "/bagger/" looks right and is too narrow: the
	// driver reads the key "/bagger" itself when it lists the prefix.
	t.Run("prefix_form_too_narrow", func(t *testing.T) {
		c := etcd.client(t, p.etcdAdmin, "root", rootPass)
		for _, step := range []func() error{
			func() error { _, err := c.RoleAdd(ctx, "narrow"); return err },
			func() error {
				_, err := c.RoleGrantPermission(ctx, "narrow", prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"), clientv3.PermissionType(clientv3.PermReadWrite))
				return err
			},
			func() error { _, err := c.UserAdd(ctx, "narrow", "narrow-Pa55"); return err },
			func() error { _, err := c.UserGrantRole(ctx, "narrow", "narrow"); return err },
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		s, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAdmin, "narrow", "narrow-Pa55"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Put(ctx, prefix+"/Config/n", []byte(`1`)); err != nil {
			t.Fatalf("Put under %s/: %v", prefix, err)
		}
		if _, _, err := s.List(ctx, prefix); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("List %s with --prefix=true %s/: %v, want permission denied", prefix, prefix, err)
		}
	})

	// A certificate the CA issued to a name that is no etcd user.
	s, err := kvdriver.Open(ctx, etcd.url(t, p.etcdAdmin, "", ""))
	if err == nil {
		_, err = s.Put(ctx, prefix+"/Config/k", []byte(`1`))
		s.Close()
	}
	if err == nil {
		t.Error("a certificate of no etcd user may write")
	}
	if kv, err := root.Get(ctx, "/Config/outside"); err != nil || string(kv.Value) != `"root's"` {
		t.Errorf("root's key outside the range: %s, %v", kv.Value, err)
	}
}
