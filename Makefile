# Perimeter — `make help` lists the targets.
GO      ?= go
BIN     := bin/perimeter
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...

.DEFAULT_GOAL := help
.PHONY: help build image demo test test-deps check bench

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The perimeter binary embeds a slim build of its sandboxd (cmd/perimeter-sandboxd),
# which starts faster in every sandbox; an overlay puts it in place so the
# source tree holds no binary. See internal/sandboxbin.
build: ## Build the static binary at ./bin/perimeter
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/perimeter-sandboxd ./cmd/perimeter-sandboxd
	printf '{"Replace":{"%s":"%s"}}' "$(CURDIR)/internal/sandboxbin/slim/perimeter-sandboxd" "$(CURDIR)/bin/perimeter-sandboxd" > bin/overlay.json
	CGO_ENABLED=0 $(GO) build -overlay bin/overlay.json -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/perimeter

image: build ## Build the worker's container image perimeter:<version> (and :latest), offline (docs/deploy.md)
	scripts/worker-image.sh $(BIN) perimeter:$(VERSION) perimeter:latest

demo: build ## Run the quickstart scenario end to end on the embedded control plane, offline
	./$(BIN) demo

test-deps: ## Install what the tests need: Go modules; as root also Docker+gVisor, bubblewrap, debootstrap
	$(GO) mod download
	@if [ "$$(id -u)" = 0 ]; then scripts/test-deps.sh && $(MAKE) --no-print-directory build && ./$(BIN) image build; \
	else echo "make test-deps: not root, so Docker, gVisor and bubblewrap are not installed; tests that need them will skip"; fi

test: test-deps ## Run every test (vet, unit, end-to-end, fault and conformance)
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 20m $(PKGS)

check: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

bench: build ## Run the benchmarks and print ratios against the in-run baselines (bench/README.md)
	$(GO) run ./bench/roundtrip -perimeter ./$(BIN)
	$(GO) run ./bench/sandboxstart -sandboxd ./bin/perimeter-sandboxd -perimeter ./$(BIN)
	$(GO) run ./bench/decision
	$(GO) run ./bench/egress
