# atrest: build, test, lint.
#
#   make build   the atrest binary, into bin/
#   make test    every test the project has (see README.md)
#   make lint    gofmt, go vet, staticcheck
#   make demo    the guided tour on a local sandbox (not built yet)

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

export CGO_ENABLED ?= 0

.PHONY: build test unit lint demo clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/atrest ./cmd/atrest

# Unit tests, including every fuzz target's seed corpus.
unit:
	$(GO) test -count=1 ./...

test: unit

lint:
	@out=$$(git ls-files -co --exclude-standard '*.go' | xargs -r gofmt -l); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo:
	@echo "make demo is not available yet: it needs the local sandbox (RKE-style nodes, etcd, Vault, Git)"
	@echo "and the atrest daemon, which are still being built. Today you can try:"
	@echo "  make build && bin/atrest validate --config cluster/testdata/managed.yml"
	@exit 2

clean:
	rm -rf bin
