#!/usr/bin/env bash
# Node.js and the TypeScript client test's npm packages (e2e/tsclient), for the
# second-language wire test. Idempotent: installs Debian's nodejs and npm only when
# node or npm is missing (any Node >= 18 works), and runs `npm ci` from the committed
# lockfile only when node_modules is missing or older than the lockfile.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/e2e/tsclient"
log() { echo "setup-node: $*"; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 18 )); then
  log "node $(node --version) is too old: the client needs Node 18 or newer"
  exit 1
fi
# The client loads options.proto, which imports google/protobuf/descriptor.proto.
if [[ ! -f /usr/include/google/protobuf/descriptor.proto ]]; then
  apt_install libprotobuf-dev
fi
stamp="$DIR/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$DIR/package-lock.json" -nt "$stamp" ]]; then
  log "npm ci in e2e/tsclient"
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
log "node $(node --version), npm $(npm --version), e2e/tsclient packages ready"
