#!/usr/bin/env bash
# Regenerates the Go code under api/ from api/proto/*.proto.
# Idempotent: installs protoc (Debian package) and the pinned Go plugins into a
# cache directory (not into go.mod) only when they are missing or at another
# version, then regenerates. Run from anywhere: scripts/gen-proto.sh
set -euo pipefail

PROTOC_GEN_GO_VERSION="v1.36.12"      # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION="v1.5.1"   # google.golang.org/grpc/cmd/protoc-gen-go-grpc
GO_MODULE="github.com/openshell/openshell"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLUGIN_DIR="${OPENSHELL_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openshell/protoc-plugins}"
# OPENSHELL_GEN_OUT redirects the output tree (the freshness test compares
# a fresh generation against the committed code); default: the repository.
OUT="${OPENSHELL_GEN_OUT:-$ROOT}"

log() { echo "gen-proto: $*"; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v protoc >/dev/null 2>&1; then
  apt_install protobuf-compiler
fi
# The well-known types (struct.proto, descriptor.proto) ship with Debian's
# libprotobuf-dev / protobuf-compiler under /usr/include.
WKT_INCLUDE=/usr/include
if [[ ! -f "$WKT_INCLUDE/google/protobuf/struct.proto" ]]; then
  apt_install libprotobuf-dev
fi

mkdir -p "$PLUGIN_DIR"
install_plugin() { # name module-path version
  local name=$1 pkg=$2 version=$3 have=""
  if [[ -x "$PLUGIN_DIR/$name" ]]; then
    have="$("$PLUGIN_DIR/$name" --version 2>/dev/null | awk '{print $NF}')"
  fi
  if [[ "$have" != "$version" && "v$have" != "$version" ]]; then
    log "installing $pkg@$version into $PLUGIN_DIR"
    (cd "$PLUGIN_DIR" && GOBIN="$PLUGIN_DIR" GOFLAGS=-mod=mod go install "$pkg@$version")
  fi
}
install_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

log "protoc $(protoc --version | awk '{print $2}'), protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"
mkdir -p "$OUT"
cd "$ROOT/api/proto"
PATH="$PLUGIN_DIR:$PATH" protoc \
  -I . -I "$WKT_INCLUDE" \
  --go_out="$OUT" --go_opt=module="$GO_MODULE" \
  --go-grpc_out="$OUT" --go-grpc_opt=module="$GO_MODULE" \
  options.proto datamodel.proto sandbox.proto openshell.proto compute_driver.proto peer.proto snapshot.proto pool.proto
log "generated into $OUT: $(cd "$OUT" && ls -d api/*v1 | tr '\n' ' ')"
