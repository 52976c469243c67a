# atrest: build, test, lint, sandbox.
#
#   make build          the atrest binary, into bin/
#   make image          atrest's container image (IMAGE, default the chart's), with the local Docker
#   make test           every test: unit and sandbox tiers (see README.md)
#   make unit           the unit tier only (fast, no sandbox)
#   make lint           gofmt, go vet, staticcheck
#   make sandbox-up     start the local sandbox (NODES=3 for three nodes)
#   make sandbox-down   stop it and remove its state
#   make bench-rewrite  atrest's rewrite against kubectl replace, side by side; vault-transit against aescbc
#   make bench-daemon   what atrest run costs while nothing changes: etcd bytes, CPU, RSS, full census against live
#   make soak-refused   restarts a config kube-apiserver refuses causes over SOAK (1h) of daemon time
#   make demo           the guided tour on a 1-node sandbox in .demo/ (DEMO_FLAGS=--pause=false: no pauses)

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
NODES       ?= 1
SANDBOX_DIR ?= .sandbox

export CGO_ENABLED ?= 0

.PHONY: build image test unit lint deps tools sandbox-up sandbox-down bench-rewrite bench-daemon bench-webhook soak-refused demo clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/atrest ./cmd/atrest

# The image the chart runs by default: its repository and appVersion.
IMAGE ?= ghcr.io/atrest-io/atrest:$(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/atrest/Chart.yaml)
# The CA certificates the image trusts: Debian's bundle (ca-certificates).
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

image: build
	rm -rf build/image && mkdir -p build/image
	cp bin/atrest build/image/atrest
	cp $(CA_BUNDLE) build/image/ca-certificates.crt
	printf 'root:x:0:0::/:/sbin/nologin\nnonroot:x:65532:65532::/:/sbin/nologin\n' >build/image/passwd
	printf 'root:x:0:\nnonroot:x:65532:\n' >build/image/group
	DOCKER_BUILDKIT=0 docker build --quiet -f Dockerfile -t $(IMAGE) build/image
	@echo "built $(IMAGE)"

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
# nodes, etcd, Vault and Git. Two packages at a time: each starts its own
# sandbox on its own loopback /24, and the end-to-end package, the longest,
# overlaps all the others.
test: deps
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_KUBE_APISERVER_V1_32=$$(tools/build.sh kube-apiserver-v1.32) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	ATREST_HELM=$$(tools/build.sh helm) \
	$(GO) test -count=1 -tags sandbox -p 2 -timeout 60m ./...

# Measurements print numbers; they assert nothing and are not part of test.
bench-rewrite: deps
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	ATREST_KUBECTL=$$(tools/build.sh kubectl) \
	$(GO) test -count=1 -tags sandbox -run '^$$' -bench Rewrite -benchtime 1x -timeout 30m ./reconciler/rewritebench/

bench-daemon: deps
	ATREST_KUBE_APISERVER=$$(tools/build.sh kube-apiserver) \
	ATREST_VAULT=$$(tools/build.sh vault) \
	$(GO) test -count=1 -tags sandbox -run '^$$' -bench DaemonCost -benchtime 1x -timeout 60m ./daemon/costbench/

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
