package kvdriver_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
)

// A consumer mirrors a prefix: list it, then watch from the listed
// revision, and list again if the watch's history has been compacted.
func Example_mirror() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := kvdriver.Open(ctx, "mem://example-mirror")
	if err != nil {
		panic(err)
	}
	defer store.Close()
	_, _ = store.Put(ctx, "/Index/1", []byte(`{"id":1}`))

	local := map[string]string{}
	kvs, rev, err := store.List(ctx, "/Index")
	if err != nil {
		panic(err)
	}
	for _, kv := range kvs {
		local[kv.Key] = string(kv.Value)
	}
	fmt.Println("listed", len(local), "keys")

	// Changes made after the listing, even before the watch starts, are seen.
	_, _ = store.Apply(ctx, []kvdriver.Op{
		kvdriver.Put("/Index/2", []byte(`{"id":2}`)),
		kvdriver.Delete("/Index/1"),
	})
	for resp := range store.Watch(ctx, "/Index", rev) {
		if errors.Is(resp.Err, kvdriver.ErrCompacted) {
			// List again and watch from the new revision.
			break
		}
		for _, ev := range resp.Events {
			if ev.Type == kvdriver.OpPut {
				local[ev.Key] = string(ev.Value)
			} else {
				delete(local, ev.Key)
			}
			fmt.Println(ev.Type, ev.Key)
		}
		cancel() // a real consumer goes on watching
	}
	fmt.Println(local)
	// Output:
	// listed 1 keys
	// put /Index/2
	// delete /Index/1
	// map[/Index/2:{"id":2}]
}

func ExampleValidateKey() {
	for _, k := range []string{"/Index/7", "Index/7", "/Index/", "/Index/../Config"} {
		fmt.Println(k, kvdriver.ValidateKey(k) == nil)
	}
	// Output:
	// /Index/7 true
	// Index/7 false
	// /Index/ false
	// /Index/../Config false
}
