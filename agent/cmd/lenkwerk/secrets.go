package main

import (
	"net/url"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver"
)

// urlFlags are the flags whose values are connection URLs.
var urlFlags = map[string]bool{"database-url": true, "kv": true}

// secretFlags returns the names of URL flags in args whose values carry a
// password. A command line is readable by every local user (ps, /proc), so
// main refuses them; the environment (LENKWERK_DATABASE_URL,
// LENKWERK_KV_URL), PGPASSFILE and password-file= keep secrets out of it.
func secretFlags(args []string) []string {
	var found []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !urlFlags[name] {
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				break
			}
			i++
			value = args[i]
		}
		// --kv NAME=URL names a store of a fan-out.
		if n, u, ok := strings.Cut(value, "="); ok && !strings.Contains(n, "://") && strings.Contains(u, "://") {
			value = u
		}
		if hasSecret(value) {
			found = append(found, name)
		}
	}
	return found
}

// hasSecret reports a password in a URL's user info or query (a path to a
// password file is no secret), or in a libpq "key=value" string.
func hasSecret(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return kvdriver.Redact(raw) != raw
	}
	if _, ok := u.User.Password(); ok {
		return true
	}
	for k := range u.Query() {
		k = strings.ToLower(k)
		if strings.HasSuffix(k, "file") {
			continue
		}
		if strings.Contains(k, "password") || strings.Contains(k, "secret") || strings.Contains(k, "token") {
			return true
		}
	}
	return false
}
