package secure

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// TestEtcdPrefixRole: the agent's etcd user, by password or by its
// certificate's CN alone (etcd --client-cert-auth takes the CN as the user
// when no password is given), reads and writes the Bagger range and
// nothing else; a certificate whose CN is no etcd user gets nothing.
func TestEtcdPrefixRole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
