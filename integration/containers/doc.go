// Package containers runs the Lenkwerk stack — PostgreSQL, etcd (one member
// or a cluster) and the lenkwerk agent — as Docker containers on networks of
// their own, driven by testcontainers-go from go test, and holds the
// end-to-end fault scenarios that run against it (agent killed, etcd
// stopped, a member of a cluster stopped, the agent cut off from PostgreSQL
// and from the network, PostgreSQL restarted, failover between two agents on one slot,
// a postgres-only deployment with a watcher, the agent on a read-only root
// filesystem as a non-root user). The scenarios bring their stacks up with
// package integration/harness on its containers backend, which is built on
// this package: they use only what a Bagger component's test could.
//
// Images come from docker/build-images.sh, which builds them from the Go
// module proxy and Debian's mirror without any registry; EnsureImages runs
// it once per test binary, through bash (a clean clone may have lost the
// executable bit). The names are taken from LENKWERK_PG_IMAGE,
// LENKWERK_ETCD_IMAGE and LENKWERK_AGENT_IMAGE, so on a machine with a
// registry the official images can be used instead:
//
//	LENKWERK_PG_IMAGE=postgres:16 LENKWERK_ETCD_IMAGE=gcr.io/etcd-development/etcd:v3.5.17 \
//	    go test ./integration/containers
//
// Both PostgreSQL images take the same environment (POSTGRES_DB,
// POSTGRES_HOST_AUTH_METHOD) and command ("postgres -c wal_level=logical");
// both etcd images have their server at /usr/local/bin/etcd
// (LENKWERK_ETCD_ENTRYPOINT overrides it) taking etcd's flags.
//
// Ryuk, testcontainers' reaper, is an image too and cannot be pulled here:
// importing this package sets TESTCONTAINERS_RYUK_DISABLED=true, and every
// container and network is removed by the test's Cleanup, failed or not.
// After a container is stopped and started its mapped host ports change:
// the URL and endpoint methods read them afresh each time.
package containers
