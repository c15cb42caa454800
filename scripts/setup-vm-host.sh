#!/usr/bin/env bash
# Prepares this host to run openshell microVMs:
#   * QEMU (qemu-system-x86), e2fsprogs, cpio, lz4, gcc from the system's Debian sources;
#   * the guest kernel: Debian's cloud kernel, unpacked into
#     $OPENSHELL_VM_DIR/kernel/{vmlinux,vmlinuz,modules/<kver>/,version};
#   * the vhost-user vsock backend (vhost-device-vsock) from Debian unstable, fetched
#     with a PRIVATE apt sources list (never installed into the system) into
#     $OPENSHELL_VM_DIR/bin/.
#   * the arm64 guest (what Apple silicon runs): qemu-system-aarch64 (qemu-system-arm)
#     and Debian's arm64 cloud kernel, fetched through PRIVATE apt lists for arm64 (the
#     system gains no foreign architecture) into $OPENSHELL_VM_DIR/kernel-arm64/
#     {Image,modules/<kver>/,version}, and a static arm64 busybox (the arm64 test
#     image) into $OPENSHELL_VM_DIR/arm64/. OPENSHELL_VM_ARM64=0 skips it.
# Idempotent: every step is skipped when its result (keyed by version) already exists.
# OPENSHELL_VM_REFRESH=1 refreshes the package lists first (picks up newer versions).
# OPENSHELL_VM_DIR overrides the install dir; OPENSHELL_VM_KERNEL_SERIES the kernel
# series (default 6.1).
set -euo pipefail

VM_DIR="${OPENSHELL_VM_DIR:-/var/lib/openshell/vm}"
KERNEL_DIR="$VM_DIR/kernel"
BIN_DIR="$VM_DIR/bin"
CACHE_DIR="$VM_DIR/cache"

log() { printf 'setup-vm-host: %s\n' "$*"; }
die() { printf 'setup-vm-host: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and writes $VM_DIR)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian hosts"

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" -eq 0 ]; then
		log "apt-get update"
		apt-get update -qq
		APT_UPDATED=1
	fi
}

# --- 1. host packages -------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
command -v lz4 >/dev/null || need+=(lz4)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# cgo: the libkrun backend dlopens libkrun.so.1, and its tests build a C stand-in.
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ "${#need[@]}" -gt 0 ]; then
	apt_install "${need[@]}"
else
	log "host packages present (qemu-system-x86_64, mkfs.ext4, cpio, lz4)"
fi

mkdir -p "$KERNEL_DIR" "$BIN_DIR" "$CACHE_DIR"

# --- 2. guest kernel --------------------------------------------------------
# The newest linux-image-<series>*-cloud-amd64-unsigned in the system's sources. The
# series defaults to 6.1: its image is LZ4-compressed (raw vmlinux extractable with lz4)
# and its modules are uncompressed .ko files the guest init loads directly; the 6.12
# series uses zstd and .ko.xz modules, which the guest bundle does not handle.
SERIES="${OPENSHELL_VM_KERNEL_SERIES:-6.1}"
find_kernel_pkg() {
	apt-cache search --names-only "^linux-image-${SERIES//./\\.}[.-].*-cloud-amd64-unsigned\$" |
		awk '{print $1}' | sort -V | tail -n1
}
# The package lists may be missing or stale: refresh them once when asked to
# (OPENSHELL_VM_REFRESH=1) or when they know no such kernel.
if [ "${OPENSHELL_VM_REFRESH:-0}" = 1 ]; then apt_update_once; fi
kpkg="$(find_kernel_pkg)"
if [ -z "$kpkg" ]; then
	apt_update_once
	kpkg="$(find_kernel_pkg)"
fi
[ -n "$kpkg" ] || die "no linux-image-${SERIES}*-cloud-amd64-unsigned package in the apt sources"
kver="${kpkg#linux-image-}"
kver="${kver%-unsigned}"
kdebver="$(apt-cache show "$kpkg" | awk '/^Version:/{print $2; exit}')"
want="$kpkg $kdebver"

if [ -f "$KERNEL_DIR/version" ] && [ "$(cat "$KERNEL_DIR/version")" = "$want" ] &&
	[ -f "$KERNEL_DIR/vmlinux" ] && [ -d "$KERNEL_DIR/modules/$kver" ]; then
	log "guest kernel $want already in $KERNEL_DIR"
else
	work="$(mktemp -d "$CACHE_DIR/kernel.XXXXXX")"
	trap 'rm -rf "$work"' EXIT
	log "downloading $kpkg ($kdebver)"
	# Downloads as root into a private dir (the _apt sandbox user cannot write there).
	(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
	log "unpacking $kpkg"
	dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/root"
	vmlinuz="$work/root/boot/vmlinuz-$kver"
	[ -f "$vmlinuz" ] || die "$vmlinuz missing from $kpkg"
	# The bzImage carries an LZ4 (legacy frame, magic 02 21 4c 18) payload: the raw
	# ELF vmlinux inside boots directly through PVH, faster and with less guest RAM.
	off="$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -n1 | cut -d: -f1 || true)"
	[ -n "$off" ] || die "no LZ4 payload found in $vmlinuz"
	log "extracting raw vmlinux (LZ4 payload at offset $off)"
	# lz4 complains about the trailing bytes after the payload; the output is complete.
	tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$work/vmlinux" 2>/dev/null || true
	head -c 4 "$work/vmlinux" | grep -q 'ELF' || die "extracted vmlinux is not an ELF file"
	rm -rf "$KERNEL_DIR/modules.new"
	mkdir -p "$KERNEL_DIR/modules.new"
	cp -a "$work/root/lib/modules/$kver" "$KERNEL_DIR/modules.new/$kver"
	cp "$vmlinuz" "$KERNEL_DIR/vmlinuz.new"
	mv "$work/vmlinux" "$KERNEL_DIR/vmlinux.new"
	# Swap in all pieces, then record the version last so a half-done run redoes it.
	rm -f "$KERNEL_DIR/version"
	rm -rf "$KERNEL_DIR/modules"
	mv "$KERNEL_DIR/modules.new" "$KERNEL_DIR/modules"
	mv "$KERNEL_DIR/vmlinuz.new" "$KERNEL_DIR/vmlinuz"
	mv "$KERNEL_DIR/vmlinux.new" "$KERNEL_DIR/vmlinux"
	echo "$want" >"$KERNEL_DIR/version"
	echo "$kver" >"$KERNEL_DIR/kver"
	rm -rf "$work"
	trap - EXIT
	log "guest kernel $kver installed in $KERNEL_DIR"
fi

# --- 3. vhost-device-vsock from Debian unstable (private apt state) ---------
# The mirror is the one the system already uses; only the suite differs.
mirror="$(
	{
		grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
		grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
	} | grep -oE 'https?://[^ ]+' | grep -v -- '-security' |
		grep '/debian/\?$' | head -n1 || true
)"
[ -n "$mirror" ] || die "cannot find the Debian mirror in /etc/apt/sources.list*"
SID="$CACHE_DIR/apt-sid"
mkdir -p "$SID/lists/partial" "$SID/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$SID/sources.list"
sid_apt=(apt-get -qq
	-o "Dir::Etc::sourcelist=$SID/sources.list"
	-o "Dir::Etc::sourceparts=/nonexistent"
	-o "Dir::State::Lists=$SID/lists"
	-o "Dir::Cache::Archives=$SID/archives"
	-o "Dir::State::status=/var/lib/dpkg/status")
sid_cache=(apt-cache
	-o "Dir::Etc::sourcelist=$SID/sources.list"
	-o "Dir::Etc::sourceparts=/nonexistent"
	-o "Dir::State::Lists=$SID/lists"
	-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")

if [ -x "$BIN_DIR/vhost-device-vsock" ] && [ -f "$BIN_DIR/vhost-device-vsock.version" ] &&
	[ "${OPENSHELL_VM_REFRESH:-0}" != 1 ]; then
	log "vhost-device-vsock $(cat "$BIN_DIR/vhost-device-vsock.version") already in $BIN_DIR"
else
	log "updating private apt lists for unstable (in $SID; the system is not touched)"
	"${sid_apt[@]}" update
	vver="$("${sid_cache[@]}" show vhost-device-vsock | awk '/^Version:/{print $2; exit}')"
	[ -n "$vver" ] || die "vhost-device-vsock not found in unstable"
	work="$(mktemp -d "$CACHE_DIR/vsock.XXXXXX")"
	trap 'rm -rf "$work"' EXIT
	log "downloading vhost-device-vsock $vver"
	(cd "$work" && "${sid_apt[@]}" -o APT::Sandbox::User=root download vhost-device-vsock)
	dpkg-deb -x "$work"/vhost-device-vsock_*.deb "$work/root"
	install -m 0755 "$work/root/usr/bin/vhost-device-vsock" "$BIN_DIR/vhost-device-vsock.new"
	mv "$BIN_DIR/vhost-device-vsock.new" "$BIN_DIR/vhost-device-vsock"
	echo "$vver" >"$BIN_DIR/vhost-device-vsock.version"
	rm -rf "$work"
	trap - EXIT
	"$BIN_DIR/vhost-device-vsock" --version >/dev/null 2>&1 ||
		die "$BIN_DIR/vhost-device-vsock does not run on this host (glibc too old?)"
	log "vhost-device-vsock $vver installed in $BIN_DIR"
fi

# --- 4. arm64 guest: qemu-system-aarch64 and Debian's arm64 cloud kernel -----
# The kernel package's vmlinuz is an uncompressed arm64 Image, which is what
# Virtualization.framework boots; the tests boot it under qemu-system-aarch64 (TCG).
ARM_DIR="$VM_DIR/kernel-arm64"
if [ "${OPENSHELL_VM_ARM64:-1}" != 0 ]; then
	if ! command -v qemu-system-aarch64 >/dev/null; then
		apt_install qemu-system-arm
	fi
	ARMAPT="$CACHE_DIR/apt-arm64"
	mkdir -p "$ARMAPT/lists/partial" "$ARMAPT/archives/partial"
	# Same mirrors and suites as the system, arm64 only.
	{
		sec="$({ grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
			grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
		} | grep -oE 'https?://[^ ]+' | grep -- '-security' | head -n1 || true)"
		echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main"
		echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-updates main"
		[ -z "$sec" ] || echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $sec bookworm-security main"
	} >"$ARMAPT/sources.list"
	arm_opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
		-o "Dir::Etc::sourcelist=$ARMAPT/sources.list"
		-o "Dir::Etc::sourceparts=/nonexistent"
		-o "Dir::State::Lists=$ARMAPT/lists"
		-o "Dir::Cache::Archives=$ARMAPT/archives"
		-o "Dir::State::status=/dev/null"
		-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
	find_arm_kernel() {
		apt-cache "${arm_opts[@]}" search --names-only "^linux-image-${SERIES//./\\.}[.-].*-cloud-arm64-unsigned\$" 2>/dev/null |
			awk '{print $1}' | sort -V | tail -n1
	}
	akpkg=""
	if [ "${OPENSHELL_VM_REFRESH:-0}" != 1 ]; then akpkg="$(find_arm_kernel)"; fi
	if [ -z "$akpkg" ]; then
		log "updating private apt lists for arm64 (in $ARMAPT; the system is not touched)"
		apt-get -qq "${arm_opts[@]}" update
		akpkg="$(find_arm_kernel)"
	fi
	[ -n "$akpkg" ] || die "no linux-image-${SERIES}*-cloud-arm64-unsigned package for arm64"
	akver="${akpkg#linux-image-}"
	akver="${akver%-unsigned}"
	akdeb="$(apt-cache "${arm_opts[@]}" show "$akpkg" | awk '/^Version:/{print $2; exit}')"
	awant="$akpkg $akdeb"
	if [ -f "$ARM_DIR/version" ] && [ "$(cat "$ARM_DIR/version")" = "$awant" ] &&
		[ -f "$ARM_DIR/Image" ] && [ -d "$ARM_DIR/modules/$akver" ]; then
		log "arm64 guest kernel $awant already in $ARM_DIR"
	else
		work="$(mktemp -d "$CACHE_DIR/kernel-arm64.XXXXXX")"
		trap 'rm -rf "$work"' EXIT
		log "downloading $akpkg ($akdeb)"
		(cd "$work" && apt-get -qq "${arm_opts[@]}" -o APT::Sandbox::User=root download "$akpkg")
		dpkg-deb -x "$work"/"$akpkg"_*.deb "$work/root"
		img="$work/root/boot/vmlinuz-$akver"
		[ -f "$img" ] || die "$img missing from $akpkg"
		# An arm64 Image has "ARM\x64" at offset 56; a compressed one would not.
		[ "$(dd if="$img" bs=1 skip=56 count=4 2>/dev/null | od -An -c | tr -d ' ')" = 'ARMd' ] ||
			die "$img is not an uncompressed arm64 Image"
		rm -rf "$ARM_DIR.new"
		mkdir -p "$ARM_DIR.new/modules"
		cp -a "$work/root/lib/modules/$akver" "$ARM_DIR.new/modules/$akver"
		cp "$img" "$ARM_DIR.new/Image"
		echo "$awant" >"$ARM_DIR.new/version"
		echo "$akver" >"$ARM_DIR.new/kver"
		rm -rf "$ARM_DIR"
		mv "$ARM_DIR.new" "$ARM_DIR"
		rm -rf "$work"
		trap - EXIT
		log "arm64 guest kernel $akver installed in $ARM_DIR"
	fi
	# A static arm64 busybox: the arm64 end-to-end test's sandbox image.
	ABB_DIR="$VM_DIR/arm64"
	abbver="$(apt-cache "${arm_opts[@]}" show busybox-static | awk '/^Version:/{print $2; exit}')"
	if [ -x "$ABB_DIR/busybox" ] && [ "$(cat "$ABB_DIR/busybox.version" 2>/dev/null)" = "$abbver" ]; then
		log "arm64 busybox-static $abbver already in $ABB_DIR"
	else
		[ -n "$abbver" ] || die "busybox-static not found for arm64"
		work="$(mktemp -d "$CACHE_DIR/busybox-arm64.XXXXXX")"
		trap 'rm -rf "$work"' EXIT
		(cd "$work" && apt-get -qq "${arm_opts[@]}" -o APT::Sandbox::User=root download busybox-static)
		dpkg-deb -x "$work"/busybox-static_*.deb "$work/root"
		mkdir -p "$ABB_DIR"
		install -m 0755 "$work/root/bin/busybox" "$ABB_DIR/busybox.new"
		mv "$ABB_DIR/busybox.new" "$ABB_DIR/busybox"
		echo "$abbver" >"$ABB_DIR/busybox.version"
		rm -rf "$work"
		trap - EXIT
		log "arm64 busybox-static $abbver installed in $ABB_DIR"
	fi
fi

# --- 5. summary -------------------------------------------------------------
accel=tcg
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -r /dev/kvm ]; then accel=kvm; fi
log "done: kernel=$KERNEL_DIR/vmlinux ($(cat "$KERNEL_DIR/kver" 2>/dev/null || echo ?)) modules=$KERNEL_DIR/modules"
log "      vsock backend=$BIN_DIR/vhost-device-vsock accel=$accel (/dev/vhost-vsock: $([ -e /dev/vhost-vsock ] && echo yes || echo no))"
