# Shared by the project's scripts: source it after defining log().
# shellcheck shell=bash

# apt_install installs the Debian packages among its arguments that are not installed
# yet. It tries the package lists as they are first and runs `apt-get update` only
# when that fails (a fresh machine has no lists; a warm one needs no download).
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	command -v apt-get >/dev/null || { log "apt-get not found: install ${missing[*]} by hand (these scripts support Debian hosts)"; return 1; }
	log "installing from Debian: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
	}
}

# shared_netns_dir makes /run/netns a shared mount point of its own, as both the
# test cluster's containerd and rootful Podman want it. Each engine, on its first
# network namespace, bind-mounts the directory onto itself when it is not a mount
# point yet; when the other engine already had a namespace mounted in it, that bind
# hides the namespace's mount, which then can never be unmounted or removed (unlink:
# "device or resource busy"), and the pod or container it belongs to never finishes
# terminating. Called before either engine starts, so neither binds it again.
shared_netns_dir() {
	mkdir -p /run/netns
	if ! mountpoint -q /run/netns; then
		mount --bind /run/netns /run/netns
	fi
	mount --make-shared /run/netns
}
