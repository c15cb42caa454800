# openshell build entry points. Binaries land in ./bin.
GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(or $(OPENSHELL_CACHE),$(HOME)/.cache/openshell)/tools
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)/staticcheck

.PHONY: all build test test-short bench lint proto vet fmt staticcheck tidy clean

all: build

# The CLI starts anew for every command: on Linux it is linked without cgo (no dynamic
# loader or C library to start: 6-7 ms less per command here); elsewhere (macOS) it
# keeps cgo for the system's name resolver.
CLI_CGO := $(if $(filter Linux,$(shell uname -s)),0,1)

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/openshell-gateway ./cmd/openshell-driver-vm
	CGO_ENABLED=$(CLI_CGO) $(GO) build -o $(BIN)/ ./cmd/openshell
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/openshell-sandbox ./cmd/openshell-sandbox

# The full suite with the real components (QEMU, dockerd, PostgreSQL); installs and
# starts what it needs. This is what CI runs.
test:
	./scripts/test.sh

# Unit tests only: no engines started, integration tests skip with their reason.
test-short:
	$(GO) test -short ./...

bench:
	./scripts/bench.sh

lint: vet fmt staticcheck tidy

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# go.mod lists exactly what the code imports (direct vs indirect) and go.sum has every sum.
tidy:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

$(STATICCHECK):
	@mkdir -p $(dir $@)
	GOBIN=$(dir $@) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

proto:
	./scripts/gen-proto.sh

clean:
	rm -rf $(BIN)
