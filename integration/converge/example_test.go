package converge_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
)

// A consumer's test waits until the agent has mirrored what it changed.
// converge.URL connects for each check, so the wait survives a database
// restart; a *pgx.Conn or *pgxpool.Pool works as well.
func ExampleWait() {
	ctx := context.Background()
	store, err := kvdriver.Open(ctx, "etcd://127.0.0.1:2379")
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	db := converge.URL("postgres://postgres@127.0.0.1:5432/lenkwerk?sslmode=disable")
	diff, err := converge.Wait(ctx, db, store, converge.Options{Prefix: "/bagger"}, 30*time.Second)
	if err != nil {
		log.Fatal(err) // names the missing, unexpected and different keys
	}
	fmt.Println(diff.Expected, "keys mirrored")
}
