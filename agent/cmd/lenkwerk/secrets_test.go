package main

import (
	"slices"
	"testing"
)

func TestSecretFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--database-url", "postgres://agent@db/lw", "--kv", "etcd://e:2379"}, nil},
		{[]string{"--database-url", "postgres://agent:s3cret@db/lw"}, []string{"database-url"}},
		{[]string{"-database-url=postgres://db/lw?password=s3cret"}, []string{"database-url"}},
		{[]string{"--kv", "etcd://u:s3cret@e:2379"}, []string{"kv"}},
		{[]string{"--kv=b=etcd://u:s3cret@e:2379"}, []string{"kv"}},
		{[]string{"--kv", "b=postgres://db/kv?password-file=/run/pw"}, nil},
		{[]string{"put", "/k", `{"password":"x"}`}, nil},
		{[]string{"--", "--kv", "etcd://u:s3cret@e:2379"}, nil},
		{[]string{"--kv"}, nil},
	} {
		if got := secretFlags(tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("secretFlags(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}
