#!/usr/bin/env bash
# The whole test suite against real components: QEMU guests (TCG where the host has no
# usable KVM), a real dockerd, real Podman services, a one-node Kubernetes cluster (real
# kube-apiserver, etcd, kubelet on containerd, agent-sandbox controller), a real PostgreSQL. Installs and starts what the tests need
# through the project's own setup scripts, runs lint and every Go test, and stops the
# services it started. CI runs exactly this (with CI=true, under which a missing
# prerequisite fails a test instead of skipping it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export OPENSHELL_CACHE="${OPENSHELL_CACHE:-$HOME/.cache/openshell}"
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "host packages, guest kernel and vsock backend"
./scripts/setup-vm-host.sh
command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }

# Stop at the end only the engines this run started; ones that already answered stay
# up. The trap is in place before any is started, so a failing step stops them too.
docker_was_up=false
docker version >/dev/null 2>&1 && docker_was_up=true
podman_was_up=false
./scripts/setup-podman.sh status >/dev/null 2>&1 && podman_was_up=true
kube_was_up=false
./scripts/setup-kubernetes.sh status >/dev/null 2>&1 && kube_was_up=true
pgdir=""
cleanup() {
	if [[ -n "$pgdir" ]]; then
		./scripts/setup-postgres.sh stop "$pgdir" >/dev/null 2>&1 || true
		rm -rf "$pgdir"
	fi
	$kube_was_up || ./scripts/setup-kubernetes.sh stop || true
	$podman_was_up || ./scripts/setup-podman.sh stop || true
	$docker_was_up || ./scripts/setup-docker.sh stop || true
}
trap cleanup EXIT

step "Docker engine"
./scripts/setup-docker.sh
./scripts/setup-docker-cdi.sh # a CDI-capable dockerd 26 the Docker GPU test starts privately

step "Podman 5 (built once into \$OPENSHELL_CACHE; a rootful and a rootless service)"
./scripts/setup-podman.sh >/dev/null

step "Kubernetes test cluster (built once into \$OPENSHELL_CACHE; apiserver, etcd, a kubelet node, agent-sandbox)"
./scripts/setup-kubernetes.sh >/dev/null

pgdir="$(mktemp -d /tmp/openshell-test-pg.XXXXXX)"

step "PostgreSQL (throwaway server for the store tests)"
eval "$(./scripts/setup-postgres.sh start "$pgdir" | grep '^OPENSHELL_TEST_POSTGRES_DSN=' | sed 's/^/export /')"

step "images the tests use (built locally, no registry)"
# Every image a test needs is built here, before go test, so no test depends on another
# package having run first or on leftovers of an earlier run.
./scripts/build-base-image.sh
./scripts/testimage/build.sh all
ENGINE=podman ./scripts/testimage/build.sh all
ENGINE=containerd ./scripts/testimage/build.sh all # into the test node's containerd
./scripts/build-gateway-image.sh import           # the gateway image: chart install, the pods' supervisor
./deploy/helm/fetch-agent-sandbox.sh              # the Sandbox CRD the chart can install
./scripts/setup-node.sh # Node.js and the TypeScript client's npm packages (second-language wire test)

step "build"
make --no-print-directory build

# Lint and tests both run, so one report shows every problem; either failing fails the run.
step "lint: gofmt, go vet, staticcheck, go mod tidy"
lint_ok=true
make --no-print-directory lint || lint_ok=false

step "go test"
test_ok=true
log="${OPENSHELL_TEST_LOG:-/tmp/openshell-test.log}"
go test -count=1 -timeout 40m ./... 2>&1 | tee "$log" || test_ok=false

step "race detector: the supervisor's concurrent pieces and the host channel"
# A lost race here shows only now and then under load; the detector makes it show
# in most runs (the main process's end and its attached clients, sessions, relays).
go test -race -count=1 -timeout 10m ./supervisor/mainproc/ ./supervisor/sshd/ ./supervisor/session/ \
	./supervisor/reaper/ ./supervisor/transfer/ ./supervisor/egress/ ./supervisor/credentials/ \
	./vmm/channel/ 2>&1 | tee -a "$log" || test_ok=false

step "supervisor-core end-to-end tests again, on the VM driver"
E2E_DRIVER=vm go test -count=1 -timeout 30m ./e2e/ 2>&1 | tee -a "$log" || test_ok=false

step "supervisor-core end-to-end tests on the podman driver: rootful, then rootless"
E2E_DRIVER=podman go test -count=1 -timeout 30m ./e2e/ 2>&1 | tee -a "$log" || test_ok=false
rootless_sock="$(./scripts/setup-podman.sh env | sed -n 's/^OPENSHELL_PODMAN_ROOTLESS_SOCK=//p')"
E2E_DRIVER=podman CONTAINER_HOST="unix://$rootless_sock" go test -count=1 -timeout 30m ./e2e/ 2>&1 | tee -a "$log" || test_ok=false

step "supervisor-core end-to-end tests on the kubernetes driver (the test cluster's node)"
E2E_DRIVER=kubernetes go test -count=1 -timeout 20m ./e2e/ 2>&1 | tee -a "$log" || test_ok=false

# The failing tests' own complaints, last, where a reader of a long log looks first:
# the lines the tests wrote after "--- FAIL" (each with up to 4 lines of its text),
# without the commands they echoed and what those printed.
if ! $test_ok; then
	step "what the failing tests said (all of it is in $log)"
	awk '/^ *--- FAIL/ { fail = 1; print; next }
		/^(=== |--- |ok |FAIL|PASS)/ { fail = 0 }
		fail && /_test\.go:[0-9]+: / { more = /_test\.go:[0-9]+: \$ / ? 0 : 4; if (more) print substr($0, 1, 300); next }
		fail && more-- > 0 { print substr($0, 1, 300) }' "$log" | head -n 60 || true # head may close the pipe first
fi
$lint_ok || echo "FAILED: lint (see above)"
$test_ok || echo "FAILED: go test (see above)"
$lint_ok && $test_ok
