package harness_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/integration/harness"
)

// testNodeOnline is a Bagger component's test against a real Lenkwerk: it
// registers a storage node as the configuration tools do (role
// lenkwerk_config), sets it online and waits until the store shows it
// online, as the storage nodes will see it. The package documentation and
// the README show this body as a TestNodeOnline; here it also returns what
// the store held, for the examples' checked output.
func testNodeOnline(t testing.TB, opts ...harness.Option) string {
	s := harness.Start(t, opts...) // PostgreSQL, etcd, agent; gone after the test

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.ConfigURL()) // as lenkwerk_config
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	var id int
	err = conn.QueryRow(ctx, "SELECT id FROM storage.register_pg_instance('db1', 5432, 'bagger')").Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT storage.set_pg_instance_status($1, 3)", id); err != nil {
		t.Fatal(err)
	}

	// What a storage node sees: the row as JSON (to_jsonb) under its key.
	var node struct {
		Host   string `json:"host"`
		Port   int    `json:"port"`
		Status int    `json:"status"`
	}
	err = s.WaitForKey(ctx, "/PostgresInstance/db1/5432", func(value []byte, exists bool) bool {
		return exists && json.Unmarshal(value, &node) == nil && node.Status == 3
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:%d status %d", node.Host, node.Port, node.Status)
}

// runTest runs test as go test would, once, for an Example, which gets no
// *testing.T: testing.Benchmark lends it a real testing.TB (with Cleanup),
// running it once since it takes longer than the benchmark time.
func runTest(test func(testing.TB) string) string {
	var got string
	testing.Benchmark(func(b *testing.B) { got = test(printErrors{b}) })
	return got
}

// A consumer's test, end to end, on the local backend: the machine's
// PostgreSQL binaries, embedded etcd, the agent as a child process.
func Example_local() {
	fmt.Println(runTest(func(t testing.TB) string {
		return testNodeOnline(t, harness.WithBackend(harness.Local))
	}))
	// Output: db1:5432 status 3
}

// The same test on the containers backend: PostgreSQL, etcd and the agent
// in Docker containers. Without WithBackend (or LENKWERK_HARNESS_BACKEND)
// a test gets this backend when a Docker engine answers.
func Example_containers() {
	fmt.Println(runTest(func(t testing.TB) string {
		return testNodeOnline(t, harness.WithBackend(harness.Containers))
	}))
	// Output: db1:5432 status 3
}

// printErrors shows a failure in the Example's output: testing.Benchmark
// discards its B's log.
type printErrors struct{ *testing.B }

func (p printErrors) Errorf(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
	p.Fail()
}

func (p printErrors) Fatalf(format string, args ...any) {
	p.Errorf(format, args...)
	p.FailNow()
}

func (p printErrors) Fatal(args ...any) { p.Fatalf("%s", fmt.Sprint(args...)) }
