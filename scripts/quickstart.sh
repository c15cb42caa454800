#!/usr/bin/env bash
# The main job on a fresh Debian host: install what the VM driver needs, build, start a
# gateway with the VM driver on its defaults, create a sandbox and run a command in it.
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "host packages, guest kernel and vsock backend"
./scripts/setup-vm-host.sh

step "default sandbox image (Debian minbase as an OCI layout)"
./scripts/build-base-image.sh

step "build"
make --no-print-directory build
export PATH="$PWD/bin:$PATH"

step "gateway with the VM driver"
openshell gateway start --drivers vm

name="${OPENSHELL_QUICKSTART_SANDBOX:-quickstart}"
if ! openshell sandbox get "$name" >/dev/null 2>&1; then
	step "create sandbox $name"
	openshell sandbox create --name "$name"
fi

step "run a command in $name"
openshell sandbox exec -n "$name" -- sh -c 'echo "hello from $(hostname), kernel $(uname -r), user $(id -un)"; cat /etc/debian_version'

cat <<MSG

The gateway keeps running. Next:
  bin/openshell sandbox connect $name     # a shell inside the sandbox
  bin/openshell sandbox delete $name
  bin/openshell gateway stop
MSG
