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
