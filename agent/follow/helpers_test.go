package follow_test

import (
	"context"

	"github.com/bagger/lenkwerk/migrations"
)

func migrationsUp(ctx context.Context, url string) error {
	return migrations.Up(ctx, url, migrations.Options{})
}

func migrationsUpCopy(ctx context.Context, url string) error {
	return migrations.Up(ctx, url, migrations.Options{Copy: true})
}
