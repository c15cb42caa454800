#!/usr/bin/env bash
# Builds openshell's default sandbox image from Debian packages, without any container
# registry: debootstrap (minbase, bookworm) + a few tools agents need, packed into an OCI
# image layout at $OPENSHELL_IMAGES_DIR/base (default /var/lib/openshell/images/base),
# tag "latest". The VM driver's default image is oci-layout:<that dir>:latest.
#
#   scripts/build-base-image.sh [--force] [--out DIR] [--suite bookworm] [--mirror URL]
#
# Idempotent: skips when the layout exists (use --force to rebuild). Takes a few
# minutes (package downloads); progress is printed.
set -euo pipefail

IMAGES_DIR="${OPENSHELL_IMAGES_DIR:-/var/lib/openshell/images}"
OUT="$IMAGES_DIR/base"
SUITE=bookworm
MIRROR=""
FORCE=0
PACKAGES="ca-certificates,curl,git,python3,procps,less"

log() { printf 'build-base-image: %s\n' "$*"; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die() { printf 'build-base-image: ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
	case "$1" in
	--force) FORCE=1 ;;
	--out) OUT="$2"; shift ;;
	--suite) SUITE="$2"; shift ;;
	--mirror) MIRROR="$2"; shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done

if [ -f "$OUT/index.json" ] && grep -Eq '"org.opencontainers.image.ref.name": *"latest"' "$OUT/index.json" && [ "$FORCE" -eq 0 ]; then
	log "base image already present at $OUT (tag latest); use --force to rebuild"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap needs it)"
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
	apt_install debootstrap
fi
command -v go >/dev/null || die "go not found: the layout is written by a small Go program (drivers/vm/internal/mkimage)"

if [ -z "$MIRROR" ]; then
	MIRROR="$(
		{
			grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
			grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
		} | grep -oE 'https?://[^ ]+' | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true
	)"
	[ -n "$MIRROR" ] || MIRROR="http://deb.debian.org/debian"
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/openshell-base.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

log "debootstrap --variant=minbase $SUITE from $MIRROR (+ $PACKAGES) into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" |
	while IFS= read -r line; do
		case "$line" in
		I:\ Retrieving* | I:\ Validating* | I:\ Extracting* | I:\ Unpacking\ [a-z]* | I:\ Configuring\ [a-z]*) ;; # one line per package: too chatty
		*) printf 'build-base-image:   %s\n' "$line" ;;
		esac
	done

log "trimming caches and adding the sandbox user and /sandbox"
chroot "$ROOTFS" /bin/sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /var/log/apt/* /usr/share/doc/* /usr/share/man/* /usr/share/info/*'
chroot "$ROOTFS" /bin/sh -c 'getent passwd sandbox >/dev/null || useradd --uid 1000 --home-dir /sandbox --no-create-home --shell /bin/bash sandbox'
mkdir -p "$ROOTFS/sandbox"
chroot "$ROOTFS" chown sandbox:sandbox /sandbox
# The guest has no network interface of its own; resolution goes through the proxy.
: >"$ROOTFS/etc/resolv.conf"
echo openshell >"$ROOTFS/etc/hostname"
# debootstrap leaves device nodes in /dev; the guest mounts devtmpfs there anyway.
rm -rf "${ROOTFS:?}/dev/"*

log "packing the root filesystem ($(du -sh "$ROOTFS" | cut -f1))"
tar --numeric-owner --xattrs --acls -C "$ROOTFS" -cf "$WORK/layer.tar" .

log "writing the OCI layout to $OUT"
mkdir -p "$(dirname "$OUT")"
(cd "$REPO" && go run ./drivers/vm/internal/mkimage --layer "$WORK/layer.tar" --out "$OUT" --tag latest \
	--env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
	--env "LANG=C.UTF-8" --env "HOME=/sandbox" --workdir /sandbox --cmd /bin/bash)
log "done: oci-layout:$OUT:latest"
