# Lenkwerk build, test and benchmark entry points.
GO          ?= go
BIN         := bin/lenkwerk
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
PKGS        := ./...
TESTFLAGS   ?= -count=1 -timeout 40m
BENCHFLAGS  ?= -count=1 -timeout 60m -p 1
# Images (docker/build-images.sh; the container tests read the same names).
# Point them at a registry's images, e.g. LENKWERK_PG_IMAGE=postgres:16;
# only names containing "lenkwerk" are built here.
LENKWERK_AGENT_IMAGE ?= lenkwerk/agent:dev
LENKWERK_ETCD_IMAGE  ?= lenkwerk/etcd:dev
LENKWERK_PG_IMAGE    ?= lenkwerk/postgres:15
LENKWERK_PATRONI_IMAGE ?= lenkwerk/patroni:15
export LENKWERK_AGENT_IMAGE LENKWERK_ETCD_IMAGE LENKWERK_PG_IMAGE LENKWERK_PATRONI_IMAGE

.PHONY: all build test check lint staticcheck race rules bench bench-go fuzz images images-monitoring clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./agent/cmd/lenkwerk

# Everything: unit, real-PostgreSQL, real-etcd, end-to-end and container
# tests, then every fuzz target for a short bounded run. The bound is a count
# of executions, not a duration: Go 1.26's fuzz coordinator can fail a target
# with a spurious "context deadline exceeded" when a duration ends on a busy
# machine (golang/go#75804, fixed in Go 1.27).
TEST_FUZZTIME ?= 10000x
# The packages whose goroutines share state (the agent's session and its
# applier, the drivers' watchers and listeners) run under the race detector,
# the others without it (it slows them several times).
RACE_PKGS   := ./agent ./kvdriver/...
ALL_LIST     = $(shell $(GO) list $(PKGS))
RACE_LIST    = $(shell $(GO) list $(RACE_PKGS))
test: build lint rules
	LENKWERK_BIN=$(abspath $(BIN)) $(GO) test $(TESTFLAGS) $(filter-out $(RACE_LIST),$(ALL_LIST))
	$(MAKE) --no-print-directory race
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

# The fast loop: vet, gofmt, staticcheck and the race-detector tests.
check: lint race

race: build
	LENKWERK_BIN=$(abspath $(BIN)) $(GO) test -race $(TESTFLAGS) $(RACE_PKGS)

# The shipped Prometheus alerting rules: valid, and each alert's unit tests
# pass (promtool: Debian's prometheus package; .ci/run installs it). That
# every metric and label they use exists is docker/prometheus's Go test.
PROMTOOL ?= promtool
rules:
	$(PROMTOOL) check rules docker/prometheus/lenkwerk.rules.yaml
	cd docker/prometheus && $(PROMTOOL) test rules lenkwerk.rules.test.yaml

STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint: staticcheck
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

staticcheck:
	$(STATICCHECK) $(PKGS)

# The benchmark suite against real PostgreSQL, etcd and pgkv: every figure
# next to a raw baseline measured in the same run, printed as the table of
# integration/bench/BENCHMARKS.md (~10 min, the fan-out scenario with its
# lenkwerk follow processes ~4 of them; LWBENCHFLAGS='-only bulk -rows 10000'
# for less, -json FILE keeps the raw results).
LWBENCHFLAGS ?= -large -drivers
bench:
	$(GO) run ./integration/bench/cmd/lwbench $(LWBENCHFLAGS)

# Every package's Go benchmarks, one package at a time (two suites sharing
# two cores distort each other's figures).
bench-go:
	$(GO) test -p 1 -run '^$$' -bench . -benchmem $(BENCHFLAGS) $(PKGS)

# Fuzz targets (package:target). Their seed corpora in testdata/fuzz run in
# every `go test`; this runs the fuzzer itself for FUZZTIME each (make test:
# TEST_FUZZTIME). A duration here may end in a spurious "context deadline
# exceeded" with no failing input written (golang/go#75804): only a file
# written under testdata/fuzz is a finding.
# The targets are found, not listed: every top-level `func FuzzXxx` in a
# _test.go file, so a new one runs without an edit here (go test -fuzz takes
# one target per run). FUZZ_TARGETS=./kvdriver:FuzzRedact picks some.
FUZZTIME    ?= 60s
FUZZ_TARGETS ?= $(shell grep -rHo --include='*_test.go' --exclude-dir=testdata --exclude-dir=.git \
	'^func Fuzz[A-Za-z0-9_]*' . | sed 's|/[^/]*_test\.go:func |:|' | sort)

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The agent, etcd, PostgreSQL and Patroni images, built without a registry; an image
# whose inputs did not change is kept (FORCE=1 rebuilds).
images:
	bash docker/build-images.sh $(if $(FORCE),-f)

# The images plus Prometheus for docker/compose.yaml's monitoring profile.
LENKWERK_PROMETHEUS_IMAGE ?= lenkwerk/prometheus:dev
images-monitoring:
	LENKWERK_PROMETHEUS_IMAGE=$(LENKWERK_PROMETHEUS_IMAGE) bash docker/build-images.sh $(if $(FORCE),-f)

clean:
	rm -rf bin
