package kvdriver

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultMaxKeyBytes bounds key length for every driver.
const DefaultMaxKeyBytes = 1024

// ValidateKey reports whether key is a valid store key: it starts with '/',
// has no empty segment (no "//", no trailing '/'), no "." or ".." segment,
// is valid UTF-8 without NUL and is at most DefaultMaxKeyBytes long. The
// error wraps ErrInvalidKey and names the problem.
func ValidateKey(key string) error {
	if err := validatePath(key); err != nil {
		return err
	}
	if key == "/" {
		return fmt.Errorf("%w: %q is the root, not a key", ErrInvalidKey, key)
	}
	return nil
}

// ValidatePrefix reports whether prefix is a valid prefix: what CleanPrefix
// accepts.
func ValidatePrefix(prefix string) error {
	_, err := CleanPrefix(prefix)
	return err
}

// CleanPrefix returns prefix in its canonical form, the one the drivers
// match with: the root "/" or a key (ValidateKey). One trailing '/' is
// dropped, so "/Index/" means what "/Index" means, every key at or below
// it, as etcdctl users type it; the error wraps ErrInvalidKey for anything
// else that breaks the key rules ("/Index//", "//", "/a/../b").
func CleanPrefix(prefix string) (string, error) {
	clean := prefix
	if len(clean) > 1 && clean[len(clean)-1] == '/' {
		clean = clean[:len(clean)-1]
		if clean[len(clean)-1] == '/' {
			return "", fmt.Errorf("%w: prefix %q has an empty segment", ErrInvalidKey, prefix)
		}
	}
	if err := validatePath(clean); err != nil {
		if clean != prefix {
			return "", fmt.Errorf("prefix %q: %w", prefix, err)
		}
		return "", err
	}
	return clean, nil
}

func validatePath(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	case len(key) > DefaultMaxKeyBytes:
		return fmt.Errorf("%w: key is %d bytes, longer than %d", ErrInvalidKey, len(key), DefaultMaxKeyBytes)
	case key[0] != '/':
		return fmt.Errorf("%w: key %q does not start with '/'", ErrInvalidKey, key)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: key %q is not valid UTF-8", ErrInvalidKey, key)
	case strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("%w: key %q contains a NUL byte", ErrInvalidKey, key)
	case key == "/":
		return nil
	case strings.HasSuffix(key, "/"):
		return fmt.Errorf("%w: key %q ends with '/'", ErrInvalidKey, key)
	case strings.Contains(key, "//"):
		return fmt.Errorf("%w: key %q has an empty segment", ErrInvalidKey, key)
	case hasDotSegment(key):
		return fmt.Errorf("%w: key %q has a \".\" or \"..\" segment", ErrInvalidKey, key)
	}
	return nil
}

// hasDotSegment reports a "." or ".." segment. Such keys would name
// another key (or escape their prefix) for any consumer that treats keys
// as paths: path.Clean, HTTP routers, files of a dump.
func hasDotSegment(key string) bool {
	for i := 0; i < len(key); {
		j := strings.IndexByte(key[i+1:], '/')
		if j < 0 {
			j = len(key)
		} else {
			j += i + 1
		}
		if seg := key[i+1 : j]; seg == "." || seg == ".." {
			return true
		}
		i = j
	}
	return false
}

// ValidateValue reports whether value is a single valid JSON document in
// UTF-8 (RFC 8259; encoding/json alone would accept invalid UTF-8 inside
// strings, which PostgreSQL's json types refuse). The error wraps
// ErrInvalidValue.
func ValidateValue(value []byte) error {
	if len(value) == 0 {
		return fmt.Errorf("%w: empty value (a delete is Delete, not an empty Put)", ErrInvalidValue)
	}
	if !utf8.Valid(value) {
		return fmt.Errorf("%w: value is not valid UTF-8", ErrInvalidValue)
	}
	if !json.Valid(value) {
		return fmt.Errorf("%w: value is not valid JSON", ErrInvalidValue)
	}
	return nil
}

// InPrefix reports whether key is at or below prefix ("/Index" holds
// "/Index" and "/Index/1" but not "/IndexField"; "/" holds every key).
// A trailing '/' on prefix changes nothing, as in CleanPrefix.
func InPrefix(key, prefix string) bool {
	if len(prefix) > 1 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	if prefix == "/" {
		return strings.HasPrefix(key, "/")
	}
	return key == prefix || (strings.HasPrefix(key, prefix) && len(key) > len(prefix) && key[len(prefix)] == '/')
}

// ValidateBatch checks every op of a batch against the key and value rules,
// duplicate keys and limits, so a driver can reject a bad batch before
// writing anything.
func ValidateBatch(ops []Op, l Limits) error {
	if l.MaxBatchOps > 0 && len(ops) > l.MaxBatchOps {
		return fmt.Errorf("%w: batch has %d operations, more than %d", ErrTooLarge, len(ops), l.MaxBatchOps)
	}
	// A key may be written once and required once in a batch.
	written := make(map[string]struct{}, len(ops))
	required := map[string]struct{}{}
	size := 0
	for i, op := range ops {
		if err := ValidateKey(op.Key); err != nil {
			return fmt.Errorf("batch operation %d: %w", i, err)
		}
		seen := written
		if op.Type == OpRequire {
			seen = required
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("%w: key %q appears twice", ErrInvalidBatch, op.Key)
		}
		seen[op.Key] = struct{}{}
		switch op.Type {
		case OpPut:
			if err := ValidatePut(op.Key, op.Value, l); err != nil {
				return fmt.Errorf("batch operation %d: %w", i, err)
			}
		case OpDelete:
		case OpRequire:
			if op.ModRevision < 0 {
				return fmt.Errorf("%w: operation %d requires negative revision %d of %q", ErrInvalidBatch, i, op.ModRevision, op.Key)
			}
			if l.MaxKeyBytes > 0 && len(op.Key) > l.MaxKeyBytes {
				return fmt.Errorf("%w: key %q is %d bytes, more than %d", ErrTooLarge, op.Key, len(op.Key), l.MaxKeyBytes)
			}
		default:
			return fmt.Errorf("%w: operation %d on %q has unknown type %d", ErrInvalidBatch, i, op.Key, op.Type)
		}
		size += len(op.Key) + len(op.Value)
	}
	if l.MaxBatchBytes > 0 && size > l.MaxBatchBytes {
		return fmt.Errorf("%w: batch is %d bytes, more than %d", ErrTooLarge, size, l.MaxBatchBytes)
	}
	return nil
}

// ValidatePut checks a single put against the key and value rules and limits.
func ValidatePut(key string, value []byte, l Limits) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if l.MaxKeyBytes > 0 && len(key) > l.MaxKeyBytes {
		return fmt.Errorf("%w: key %q is %d bytes, more than %d", ErrTooLarge, key, len(key), l.MaxKeyBytes)
	}
	if l.MaxValueBytes > 0 && len(value) > l.MaxValueBytes {
		return fmt.Errorf("%w: value for %q is %d bytes, more than %d", ErrTooLarge, key, len(value), l.MaxValueBytes)
	}
	if err := ValidateValue(value); err != nil {
		return fmt.Errorf("key %q: %w", key, err)
	}
	return nil
}
