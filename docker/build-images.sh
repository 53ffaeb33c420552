#!/usr/bin/env bash
# Builds the images the container tests (integration/containers) and
# docker/compose.yaml use, from what this machine can reach without a
# registry: the Go module proxy and Debian's package mirror.
#
#   docker/build-images.sh [-f]
#
#   LENKWERK_AGENT_IMAGE  (lenkwerk/agent:dev)    FROM scratch + static lenkwerk
#   LENKWERK_ETCD_IMAGE   (lenkwerk/etcd:dev)     FROM scratch + docker/etcd
#   LENKWERK_PG_IMAGE     (lenkwerk/postgres:15)  debootstrap'ed bookworm + postgresql-15
#   LENKWERK_PATRONI_IMAGE (lenkwerk/patroni:15)  the same + Debian's patroni (3.0)
#   LENKWERK_PROMETHEUS_IMAGE (unset: not built)  the same + Debian's prometheus
#
# An image is built only when its name contains "lenkwerk"; any other name
# (postgres:16, quay.io/coreos/etcd:v3.5.17) is left to Docker to pull.
# Idempotent: an image whose inputs (binary, Dockerfile, entrypoint, package
# list) are unchanged is kept; -f or LENKWERK_FORCE_IMAGES=1 rebuilds. The
# Debian root filesystem is cached in $LENKWERK_IMAGE_CACHE (docker/.cache),
# so even a forced rebuild does not run debootstrap again (delete the cache
# for that). Parallel runs (several test binaries) wait for each other.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

force=${LENKWERK_FORCE_IMAGES:-0}
if [ "${1:-}" = -f ]; then force=1; fi
AGENT_IMAGE=${LENKWERK_AGENT_IMAGE:-lenkwerk/agent:dev}
ETCD_IMAGE=${LENKWERK_ETCD_IMAGE:-lenkwerk/etcd:dev}
PG_IMAGE=${LENKWERK_PG_IMAGE:-lenkwerk/postgres:15}
PATRONI_IMAGE=${LENKWERK_PATRONI_IMAGE:-lenkwerk/patroni:15}
cache=${LENKWERK_IMAGE_CACHE:-$root/docker/.cache}
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
export DOCKER_BUILDKIT=0 # the classic builder resolves FROM locally, never pulls

mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9

log() { printf 'build-images: %s\n' "$*" >&2; }
ours() { case "$1" in *lenkwerk*) return 0 ;; esac; return 1; }
sum() { cat "$@" | sha256sum | cut -c1-16; }
# current IMAGE HASH: is IMAGE present, built from inputs hashing to HASH?
current() {
	[ "$force" = 1 ] && return 1
	local got
	got=$(docker image inspect -f '{{index .Config.Labels "org.lenkwerk.inputs"}}' "$1" 2>/dev/null) || return 1
	[ "$got" = "$2" ]
}
# gobuild OUT PKG [LDFLAGS]: a static binary.
gobuild() {
	CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w ${3:-}" -o "$1" "$2"
}
# dbuild ARGS…: docker build, quiet unless it fails (the classic builder
# prints a deprecation notice every time).
dbuild() {
	local out
	out=$(docker build "$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# goimage IMAGE DIR BIN PKG [LDFLAGS]: IMAGE of docker/DIR/Dockerfile and
# the static binary BIN built from PKG (build context $tmp/DIR), rebuilt
# whenever either differs.
goimage() {
	local image=$1 dir=$tmp/$2 bin=$3 pkg=$4 ldflags=${5:-} start=$SECONDS h
	mkdir -p "$dir"
	gobuild "$dir/$bin" "$pkg" "$ldflags"
	cp "docker/$2/Dockerfile" "$dir/"
	h=$(sum "$dir/$bin" "$dir/Dockerfile")
	if current "$image" "$h"; then
		log "$image is current"
	else
		dbuild --label "org.lenkwerk.inputs=$h" -t "$image" "$dir"
		log "$image built in $((SECONDS - start))s"
	fi
}

# agent: rebuilt whenever the binary differs, so tests run today's agent.
if ours "$AGENT_IMAGE"; then
	goimage "$AGENT_IMAGE" agent lenkwerk ./agent/cmd/lenkwerk "-X main.version=container"
fi

# etcd: its Dockerfile copies the (empty) data directory too.
if ours "$ETCD_IMAGE"; then
	mkdir -p "$tmp/etcd/data"
	goimage "$ETCD_IMAGE" etcd etcd ./docker/etcd
fi

# PostgreSQL: debootstrap (cached tarball) → docker import → Dockerfile.
PG_PACKAGES=postgresql-15,postgresql-client-15
# Bump when the pruning below changes, to make the cached root fs anew.
PG_ROOTFS_VERSION=2
# pg_base: the Debian bookworm root filesystem image (postgresql-15), made
# with debootstrap once and cached; sets $base to its name.
pg_base() {
	rootfs_tag=$(echo "$PG_PACKAGES $PG_ROOTFS_VERSION" | sha256sum | cut -c1-12)
	base=lenkwerk/pg-rootfs:bookworm-$rootfs_tag
	tarball=$cache/pg-rootfs-bookworm-$rootfs_tag.tar
	if ! docker image inspect "$base" >/dev/null 2>&1; then
		if [ ! -s "$tarball" ]; then
			if ! command -v debootstrap >/dev/null; then
				log "installing debootstrap"
				DEBIAN_FRONTEND=noninteractive apt-get update -qq
				DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
			fi
			log "debootstrap bookworm with $PG_PACKAGES (a few minutes, once)"
			rfs=$cache/rootfs.tmp
			rm -rf "$rfs"
			debootstrap --variant=minbase --include="$PG_PACKAGES" bookworm "$rfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
				{ tail -20 "$cache/debootstrap.log" >&2; exit 1; }
			# The package's own cluster and caches are dead weight, and
			# so is JIT (LLVM and z3, 140 MB; the entrypoint sets
			# jit=off, and without its provider PostgreSQL runs no JIT).
			rm -rf "$rfs"/var/lib/postgresql/15 "$rfs"/etc/postgresql/15 \
				"$rfs"/var/cache/apt/* "$rfs"/var/lib/apt/lists/* \
				"$rfs"/usr/share/doc "$rfs"/usr/share/man "$rfs"/usr/share/info \
				"$rfs"/usr/share/i18n \
				"$rfs"/usr/lib/postgresql/15/lib/llvmjit* "$rfs"/usr/lib/postgresql/15/lib/bitcode \
				"$rfs"/usr/lib/x86_64-linux-gnu/libLLVM-* "$rfs"/usr/lib/x86_64-linux-gnu/libz3.so*
			find "$rfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
			tar -C "$rfs" -cf "$tarball.tmp" .
			find "$cache" -maxdepth 1 -name 'pg-rootfs-*.tar' ! -name "${tarball##*/}" -delete
			mv "$tarball.tmp" "$tarball"
			rm -rf "$rfs"
		fi
		docker import "$tarball" "$base" >/dev/null
	fi
}

# pg_image IMAGE DIR INPUTS…: IMAGE from DIR's Dockerfile on that root
# filesystem, unless it is current for INPUTS and the package list.
pg_image() {
	local image=$1 dir=$2 start=$SECONDS h
	shift 2
	h=$(sum "$@" <(echo "$PG_PACKAGES $PG_ROOTFS_VERSION"))
	if current "$image" "$h"; then
		log "$image is current"
	else
		pg_base
		dbuild --build-arg "BASE=$base" --label "org.lenkwerk.inputs=$h" -t "$image" "$dir"
		log "$image built in $((SECONDS - start))s"
	fi
}

if ours "$PG_IMAGE"; then
	pg_image "$PG_IMAGE" docker/postgres docker/postgres/Dockerfile docker/postgres/entrypoint.sh
fi

# Patroni: the same root filesystem plus Debian's patroni (3.0) and
# python3-etcd, installed from Debian's mirror in the Dockerfile.
if ours "$PATRONI_IMAGE"; then
	pg_image "$PATRONI_IMAGE" docker/patroni docker/patroni/Dockerfile docker/patroni/entrypoint.sh
fi

# Prometheus with the shipped rules (docker/compose.yaml, profile
# monitoring): Debian's package on the same root filesystem. Only when
# asked for (LENKWERK_PROMETHEUS_IMAGE set, as `make images-monitoring`
# does): the tests do not need it.
PROM_IMAGE=${LENKWERK_PROMETHEUS_IMAGE:-}
if [ -n "$PROM_IMAGE" ] && ours "$PROM_IMAGE"; then
	pg_image "$PROM_IMAGE" docker/prometheus docker/prometheus/Dockerfile
fi
