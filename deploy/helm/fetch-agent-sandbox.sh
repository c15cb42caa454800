#!/usr/bin/env bash
# Copies the agent-sandbox Sandbox CRD (agents.x-k8s.io) of the pinned version from its
# Go module into the chart, for agentSandbox.enabled=true. The manifest is the
# dependency's own (~400 KB) and is not kept in this repository.
#   deploy/helm/fetch-agent-sandbox.sh      idempotent; needs go and the module proxy
set -euo pipefail
VERSION="${OPENSHELL_AGENT_SANDBOX_VERSION:-v0.5.6}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/openshell/files/agent-sandbox"
CRD=agents.x-k8s.io_sandboxes.yaml
if [[ -s "$DEST/$CRD" && "$(cat "$DEST/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
	exit 0
fi
dir="$(cd "$HERE" && go mod download -json "sigs.k8s.io/agent-sandbox@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$dir" || ! -s "$dir/k8s/crds/$CRD" ]]; then
	echo "fetch-agent-sandbox: sigs.k8s.io/agent-sandbox@$VERSION has no k8s/crds/$CRD" >&2
	exit 1
fi
mkdir -p "$DEST"
install -m 0644 "$dir/k8s/crds/$CRD" "$DEST/$CRD"
echo "$VERSION" >"$DEST/VERSION"
echo "fetch-agent-sandbox: $CRD ($VERSION) -> $DEST" >&2
