package pgkv_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// A consumer lists a prefix, then watches from the listed revision; when
// the watch reports compacted history it lists again.
func Example() {
	ctx := context.Background()
	store, err := kvdriver.Open(ctx, "postgres://bagger_node@db.example/bagger?sslmode=verify-full&schema=lenkwerk_kv")
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	for {
		kvs, rev, err := store.List(ctx, "/PostgresInstance")
		if err != nil {
			log.Fatal(err)
		}
		for _, kv := range kvs {
			fmt.Printf("%s = %s\n", kv.Key, kv.Value)
		}
		for resp := range store.Watch(ctx, "/PostgresInstance", rev) {
			if errors.Is(resp.Err, kvdriver.ErrCompacted) {
				break // list again
			}
			if resp.Err != nil {
				log.Fatal(resp.Err)
			}
			for _, ev := range resp.Events {
				fmt.Printf("%s %s %s @%d\n", ev.Type, ev.Key, ev.Value, ev.Revision)
			}
		}
	}
}
