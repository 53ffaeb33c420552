# Lenkwerk build, test and benchmark entry points.
GO        ?= go
BIN       := bin/lenkwerk
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
PKGS      := ./...
TESTFLAGS ?= -count=1 -timeout 40m

.PHONY: all build test lint bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./agent/cmd/lenkwerk

# Everything: unit, real-PostgreSQL, real-etcd and integration tests.
test: build lint
	$(GO) test $(TESTFLAGS) $(PKGS)

lint:
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m $(PKGS)

fuzz:
	@echo "fuzz targets are added with the security work"

clean:
	rm -rf bin
