package follow_test

import (
	"strings"
	"testing"

	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
)

// With etcd: load, follow, survive an etcd crash and restart, and
// reconcile after etcd compacted the history a stopped follower needs.
func TestEtcd(t *testing.T) {
	srv := etcdtest.New(t)
	e := newEnv(t, srv.URL(), follow.Config{Prefix: "/bagger"})
	e.apply(baseline("/bagger")...)
	e.start()
	e.caughtUp()
	e.equal()

	e.apply(kvdriver.Delete("/bagger/Index/1/11"), put("/bagger/Index/2/11", field(11, 2, 0, "lower(app)")))
	e.caughtUp()
	e.equal()

	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.apply(put("/bagger/Servermap", servermap(4, 4)), put("/bagger/Config/after-restart", config(5, "after-restart", 1)))
	e.caughtUp()
	e.equal()

	e.stop()
	e.apply(kvdriver.Delete("/bagger/Config/after-restart"))
	e.apply(put("/bagger/Dimension/3", dimension(3, 2, "level")))
	e.compact()
	e.start()
	e.caughtUp()
	e.equal()
	if !strings.Contains(e.logs.String(), "compacted") {
		t.Fatalf("no compaction seen:\n%s", e.logs)
	}
}
