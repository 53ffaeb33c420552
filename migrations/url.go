package migrations

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/golang-migrate/migrate/v4"
)

// convertURL accepts postgres://, postgresql:// and pgx5:// URLs and returns
// one for pgx (without golang-migrate's x- options) and one for
// golang-migrate's pgx5 driver, both carrying the name settings of opts, and
// the password to keep out of errors.
func convertURL(raw string, opts Options) (pgURL, migrateURL, password string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" && u.Path == "" {
		return "", "", "", errors.New("invalid database URL: want postgres://user@host:port/database")
	}
	password, _ = u.User.Password()
	switch u.Scheme {
	case "postgres", "postgresql", "pgx5":
	default:
		return "", "", password, fmt.Errorf("unsupported database URL scheme %q: want postgres://user@host:port/database", u.Scheme)
	}
	q := u.Query()
	if opts.Publication != "" {
		q.Set(PublicationSetting, opts.Publication)
	}
	if opts.Slot != "" {
		q.Set(SlotSetting, opts.Slot)
	}
	if opts.Copy {
		q.Set(RoleSetting, "copy")
	}
	u.RawQuery = q.Encode()
	u.Scheme = "pgx5"
	migrateURL = u.String()
	u.Scheme = "postgres"
	pgURL = migrate.FilterCustomQuery(u).String()
	return pgURL, migrateURL, password, nil
}

// scrub keeps the password out of err's text, whatever layer put it there.
func scrub(err error, password string) error {
	if err == nil || password == "" {
		return err
	}
	msg := err.Error()
	clean := msg
	for _, p := range []string{password, url.QueryEscape(password), url.PathEscape(password)} {
		clean = strings.ReplaceAll(clean, p, "xxxxx")
	}
	if clean == msg {
		return err
	}
	return scrubbed{msg: clean, err: err}
}

// scrubbed is an error whose text had a password removed. It answers
// errors.Is for the original but does not unwrap to it, which would hand
// the password back.
type scrubbed struct {
	msg string
	err error
}

func (e scrubbed) Error() string        { return e.msg }
func (e scrubbed) Is(target error) bool { return errors.Is(e.err, target) }
