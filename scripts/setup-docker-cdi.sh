#!/usr/bin/env bash
# Idempotent: puts a CDI-capable dockerd (Debian trixie's docker.io, 26.x) under
# /var/lib/openshell/docker-cdi for the Docker driver's GPU tests. Bookworm's dockerd
# (20.10) has no CDI, so it cannot report CDI spec directories; the tests start this
# one as a second, private daemon (own socket, data root and a CDI spec directory the
# test writes) and stop it again. Nothing is installed into the system: the package
# is fetched with private apt lists and unpacked. Its dockerd runs on bookworm's glibc
# and starts bookworm's containerd (installed with docker.io by setup-docker.sh).
set -euo pipefail

DIR="${OPENSHELL_DOCKER_CDI_DIR:-/var/lib/openshell/docker-cdi}"
log() { echo "setup-docker-cdi: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -x "$DIR/usr/sbin/dockerd" ] && "$DIR/usr/sbin/dockerd" --version >/dev/null 2>&1 &&
	[ "${OPENSHELL_DOCKER_CDI_REFRESH:-0}" != 1 ]; then
	log "$("$DIR/usr/sbin/dockerd" --version) already in $DIR"
	exit 0
fi
command -v containerd >/dev/null || die "containerd is missing: run scripts/setup-docker.sh first"

mirror="$(
	{
		grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
		grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
	} | grep -oE 'https?://[^ ]+' | grep -v -- '-security' |
		grep '/debian/\?$' | head -n1 || true
)"
[ -n "$mirror" ] || die "cannot find the Debian mirror in /etc/apt/sources.list*"
APT="$DIR/apt-trixie"
mkdir -p "$APT/lists/partial" "$APT/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$APT/sources.list"
apt_=(apt-get -qq
	-o "Dir::Etc::sourcelist=$APT/sources.list"
	-o "Dir::Etc::sourceparts=/nonexistent"
	-o "Dir::State::Lists=$APT/lists"
	-o "Dir::Cache::Archives=$APT/archives"
	-o "Dir::State::status=/var/lib/dpkg/status")
log "updating private apt lists for trixie (in $APT; the system is not touched)"
"${apt_[@]}" update
work="$(mktemp -d "$DIR/dl.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$work" && "${apt_[@]}" -o APT::Sandbox::User=root download docker.io)
dpkg-deb -x "$work"/docker.io_*.deb "$work/root"
rm -rf "$DIR/usr.new" && mv "$work/root/usr" "$DIR/usr.new"
rm -rf "$DIR/usr" && mv "$DIR/usr.new" "$DIR/usr"
"$DIR/usr/sbin/dockerd" --version >/dev/null 2>&1 || die "$DIR/usr/sbin/dockerd does not run on this host"
log "$("$DIR/usr/sbin/dockerd" --version) installed in $DIR"
