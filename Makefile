# atrest: build, test, lint, sandbox.
#
#   make build          the atrest binary, into bin/
#   make test           every test: unit and sandbox tiers (see README.md)
#   make unit           the unit tier only (fast, no sandbox)
#   make lint           gofmt, go vet, staticcheck
#   make sandbox-up     start the local sandbox (NODES=3 for three nodes)
#   make sandbox-down   stop it and remove its state
#   make bench-rewrite  atrest's rewrite against kubectl replace, side by side
#   make soak-refused   restarts a config kube-apiserver refuses causes over SOAK (1h) of daemon time
#   make demo           the guided tour on a 1-node sandbox in .demo/ (DEMO_FLAGS=--pause=false: no pauses)

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
NODES       ?= 1
SANDBOX_DIR ?= .sandbox

export CGO_ENABLED ?= 0

.PHONY: build test unit lint deps tools sandbox-up sandbox-down bench-rewrite bench-webhook soak-refused demo clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/atrest ./cmd/atrest

bin/atrest-sandbox: $(shell find sandbox -name '*.go' -not -name '*_test.go') go.mod
	$(GO) build -trimpath -o $@ ./sandbox/cmd/atrest-sandbox

# Unit tests, including every fuzz target's seed corpus. No sandbox.
unit:
	$(GO) test -count=1 ./...

# Debian packages the sandbox runs (etcd, sshd, Docker, git).
deps:
	sandbox/install-deps.sh

# The real kube-apiserver (the current release and v1.32), kubectl, Vault and
# helm, built once per version into a cache.
tools:
	tools/build.sh all

# Both tiers in one run: the sandbox tag adds the tests that bring up real
# nodes, etcd, Vault and Git. One package at a time: each starts a sandbox.
test: deps
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_KUBE_APISERVER_V1_32=$$(tools/build.sh kube-apiserver-v1.32) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	ATREST_HELM=$$(tools/build.sh helm) \
	$(GO) test -count=1 -tags sandbox -p 1 -timeout 60m ./...

# Measurements print numbers; they assert nothing and are not part of test.
bench-rewrite: deps
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	ATREST_KUBECTL=$$(tools/build.sh kubectl) \
	$(GO) test -count=1 -tags sandbox -run '^$$' -bench Rewrite -benchtime 1x -timeout 30m ./reconciler/rewritebench/

# The webhook under a flood of 200 concurrent 1 MiB unsigned requests: peak
# heap, beside the handler that buffered bodies before authenticating them.
bench-webhook:
	$(GO) test -count=1 -run '^$$' -bench WebhookFlood -benchtime 1x ./daemon/

SOAK ?= 1h
soak-refused: deps
	ATREST_SOAK=$(SOAK) \
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	$(GO) test -count=1 -tags sandbox -run '^TestRefusedConfigSoak$$' -v -timeout 3h ./e2e/

sandbox-up: deps bin/atrest-sandbox
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	bin/atrest-sandbox up --dir $(SANDBOX_DIR) --nodes $(NODES)

sandbox-down: bin/atrest-sandbox
	bin/atrest-sandbox down --dir $(SANDBOX_DIR)

lint:
	@out=$$(git ls-files -co --exclude-standard '*.go' | xargs -r gofmt -l); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags sandbox ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags sandbox ./...

# The guided tour (demo/): starts a 1-node sandbox in .demo/sandbox, runs
# bin/atrest run on its Git repository and walks through enable, rotate,
# snapshots and disable; the sandbox is removed at the end or on Ctrl-C.
# exec: the tour, not a shell, gets the terminal's Ctrl-C and cleans up.
demo: deps build
	$(GO) build -trimpath -o bin/atrest-demo ./demo
	@kas=$$(tools/build.sh kube-apiserver) && vault=$$(tools/build.sh vault) && \
	  ATREST_KUBE_APISERVER=$$kas ATREST_VAULT=$$vault exec bin/atrest-demo --atrest bin/atrest --dir .demo $(DEMO_FLAGS)

clean:
	rm -rf bin
