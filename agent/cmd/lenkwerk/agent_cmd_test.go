package main

import "testing"

func TestKVURLFromSettings(t *testing.T) {
	for _, c := range []struct {
		typ, cfg, want string
		ok             bool
	}{
		{`"etcd"`, `{"host": "kv1", "port": 2379}`, "etcd://kv1:2379", true},
		{`"etcd"`, `{"host": "::1", "port": "2380"}`, "etcd://[::1]:2380", true},
		{`"etcd"`, ``, "etcd://127.0.0.1:2379", true},
		{`"consul"`, `{}`, "", false},
		{``, `{}`, "", false},
		{`"etcd"`, `{"port": "x"}`, "", false},
	} {
		var typ, cfg []byte
		if c.typ != "" {
			typ = []byte(c.typ)
		}
		if c.cfg != "" {
			cfg = []byte(c.cfg)
		}
		got, err := kvURLFromSettings(typ, cfg)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("kvURLFromSettings(%s, %s) = %q, %v; want %q (ok %v)", c.typ, c.cfg, got, err, c.want, c.ok)
		}
	}
}
