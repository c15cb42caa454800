#!/usr/bin/env bash
# Builds the gateway's container image without a registry, a daemon or a base image:
# static openshell-gateway, openshell-sandbox (the supervisor the Kubernetes driver
# copies out of this same image) and openshell-copy (the image has no shell or cp), a
# CA bundle, /etc/passwd and /etc/group with the non-root user 65532, and /tmp.
#
#   scripts/build-gateway-image.sh [build]   write the image archive (skipped when the
#                                            archive for these sources exists)
#   scripts/build-gateway-image.sh load      build, then `docker load` it (when docker answers)
#   scripts/build-gateway-image.sh import    build, then import it into the cluster's
#                                            containerd (`ctr -n k8s.io images import`)
#   scripts/build-gateway-image.sh path      print the archive's path
#
# The tag is openshell/gateway:<version>, version = $OPENSHELL_VERSION or the Helm
# chart's appVersion, so a default `helm install` finds the image it was built with.
# The archive is $OPENSHELL_CACHE/gateway-image/<version>/gateway.tar (docker-archive
# format, read by both `docker load` and `ctr images import`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/deploy/helm/openshell/Chart.yaml"
VERSION="${OPENSHELL_VERSION:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART")}"
TAG="openshell/gateway:$VERSION"
OUT_DIR="${OPENSHELL_CACHE:-$HOME/.cache/openshell}/gateway-image/$VERSION"
OUT="$OUT_DIR/gateway.tar"

log() { echo "build-gateway-image: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -z "$VERSION" ]]; then
	log "no version: set OPENSHELL_VERSION or appVersion in $CHART"
	exit 1
fi

build() {
	if [[ ! -s /etc/ssl/certs/ca-certificates.crt ]]; then
		apt_install ca-certificates >&2
	fi
	mkdir -p "$OUT_DIR"
	local bin="$OUT_DIR/bin"
	mkdir -p "$bin"
	log "building static binaries ($VERSION)"
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/openshell/openshell/internal/version.Version=$VERSION" \
		-o "$bin/" ./cmd/openshell-gateway ./cmd/openshell-sandbox ./deploy/image/openshell-copy)
	# Rebuild the archive only when a binary or the CA bundle changed: go build keeps
	# the binaries byte-identical for the same sources.
	local sum
	sum="$(cat "$bin"/openshell-gateway "$bin"/openshell-sandbox "$bin"/openshell-copy /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -d' ' -f1)"
	if [[ -s "$OUT" && "$(cat "$OUT.inputs" 2>/dev/null)" == "$sum" ]]; then
		log "$OUT is up to date"
		return 0
	fi
	(cd "$ROOT" && go run ./deploy/image/mkimage -tag "$TAG" -out "$OUT" -version "$VERSION" \
		-bin "openshell-gateway=$bin/openshell-gateway" \
		-bin "openshell-sandbox=$bin/openshell-sandbox" \
		-bin "openshell-copy=$bin/openshell-copy")
	echo "$sum" >"$OUT.inputs"
	log "wrote $TAG to $OUT ($(du -h "$OUT" | cut -f1))"
}

case "${1:-build}" in
build) build ;;
load)
	build
	docker load -i "$OUT" >&2
	;;
import)
	# The containerd of the test node that scripts/setup-kubernetes.sh runs (CTR and
	# CTRD_SOCK override it, e.g. for another node's containerd).
	kenv="$("$ROOT/scripts/setup-kubernetes.sh" env 2>/dev/null || true)"
	CTR="${CTR:-$(sed -n 's/^OPENSHELL_KUBE_CTR=//p' <<<"$kenv")}"
	CTRD_SOCK="${CTRD_SOCK:-$(sed -n 's/^OPENSHELL_KUBE_CONTAINERD_SOCK=//p' <<<"$kenv")}"
	if [[ ! -x "$CTR" || ! -S "$CTRD_SOCK" ]]; then
		log "no test-node containerd at ${CTRD_SOCK:-?}: run scripts/setup-kubernetes.sh (or set CTR and CTRD_SOCK)"
		exit 1
	fi
	build
	"$CTR" --address "$CTRD_SOCK" -n k8s.io images import "$OUT" >&2
	log "imported $TAG into $CTRD_SOCK"
	;;
path) echo "$OUT" ;;
*)
	echo "usage: $0 [build|load|import|path]" >&2
	exit 2
	;;
esac
