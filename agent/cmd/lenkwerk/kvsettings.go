package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/bagger/lenkwerk/kvdriver/etcd"
	"github.com/jackc/pgx/v5"
)

// Where kvURLFromDatabase reads the settings, for its errors.
const (
	sourceSettings = "storage.config"              // the agent, status
	copySettings   = "local copy's storage.config" // follow
)

// kvSettingKeys are the kvstore_config keys that may come from the
// database. Whoever can write storage.config (lenkwerk_config, or through
// the store every storage node's copy) is not the operator: they may say
// where the store is, never what to read or whom to trust. Credentials,
// TLS files, timeouts and every other option come only from --kv or
// LENKWERK_KV_URL.
var kvSettingKeys = []string{"host", "port"}

// maxHostLen is a DNS name's limit.
const maxHostLen = 253

// kvURLFromDatabase builds the store URL from Bagger's storage.config rows
// kvstore_type (e.g. "etcd") and kvstore_config (e.g. {"host": …, "port":
// …}) in the database of databaseURL; source names that table in errors.
func kvURLFromDatabase(ctx context.Context, databaseURL, source string) (string, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", source, err)
	}
	defer conn.Close(context.Background())
	var typ, cfg []byte
	err = conn.QueryRow(ctx, `SELECT (SELECT value::text FROM storage.config WHERE key = 'kvstore_type'), (SELECT value::text FROM storage.config WHERE key = 'kvstore_config')`).Scan(&typ, &cfg)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", source, err)
	}
	return kvURLFromSettings(source, typ, cfg)
}

// kvURLFromSettings turns the kvstore_type and kvstore_config values (JSON;
// nil for a missing row) into an etcd URL built from checked parts: a host
// name or IP address and a port, nothing else. Errors name the row and the
// problem, never the refused value (it may hold a password by mistake).
func kvURLFromSettings(source string, typ, cfg []byte) (string, error) {
	if typ == nil {
		return "", fmt.Errorf("%s kvstore_type: no such row", source)
	}
	var t string
	if err := json.Unmarshal(typ, &t); err != nil {
		return "", fmt.Errorf("%s kvstore_type is not a JSON string", source)
	}
	if t != etcd.Scheme {
		shown := strconv.Quote(t)
		if len(t) > 20 {
			shown = "(not etcd)"
		}
		return "", fmt.Errorf("%s kvstore_type %s: only etcd can be derived; give --kv", source, shown)
	}
	host, port, err := kvHostPort(cfg)
	if err != nil {
		return "", fmt.Errorf("%s kvstore_config: %w; give --kv for anything else", source, err)
	}
	u := url.URL{Scheme: etcd.Scheme, Host: net.JoinHostPort(host, port)}
	return u.String(), nil
}

// kvHostPort checks kvstore_config and returns its host and port, with
// etcd's defaults for missing ones.
func kvHostPort(cfg []byte) (host, port string, err error) {
	host, port = "127.0.0.1", etcd.DefaultPort
	if cfg == nil || bytes.Equal(bytes.TrimSpace(cfg), []byte("null")) {
		return host, port, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(cfg, &fields); err != nil {
		return "", "", errors.New("not a JSON object")
	}
	var unknown []string
	for k := range fields {
		if !slices.Contains(kvSettingKeys, k) {
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return "", "", fmt.Errorf("%s cannot come from the database (it may hold only %s)", strings.Join(unknown, ", "), strings.Join(kvSettingKeys, " and "))
	}
	if raw, ok := fields["host"]; ok {
		if err := json.Unmarshal(raw, &host); err != nil {
			return "", "", errors.New("host is not a JSON string")
		}
		if err := checkHost(host); err != nil {
			return "", "", fmt.Errorf("host %w", err)
		}
	}
	if raw, ok := fields["port"]; ok {
		if port, err = checkPort(raw); err != nil {
			return "", "", err
		}
	}
	return host, port, nil
}

// checkHost accepts an IP address without a zone, or a DNS name: dot-
// separated labels of letters, digits, '-' and '_' (Docker service names),
// 1-63 bytes each, at most maxHostLen in all.
func checkHost(h string) error {
	if h == "" {
		return errors.New("is empty")
	}
	if len(h) > maxHostLen {
		return fmt.Errorf("is longer than %d bytes", maxHostLen)
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return errors.New("is an IP address with a zone")
		}
		return nil
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("is not a host name or IP address (empty or over-long label)")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("is not a host name or IP address (a label starts or ends with '-')")
		}
		for i := 0; i < len(label); i++ {
			switch c := label[i]; {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			case c == '@':
				return errors.New("holds user info ('@'): credentials never come from the database")
			case c == ':':
				return errors.New("holds a ':' (the port goes in \"port\"; an IPv6 address must be one)")
			case c < 0x20 || c == 0x7f:
				return errors.New("holds a control character")
			default:
				return fmt.Errorf("is not a host name or IP address (it holds %q)", string(rune(c)))
			}
		}
	}
	return nil
}

// checkPort accepts a JSON integer or a string of digits, 1 to 65535.
func checkPort(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		s = string(bytes.TrimSpace(raw))
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return "", errors.New("port is not a number from 1 to 65535")
	}
	return strconv.FormatUint(n, 10), nil
}
