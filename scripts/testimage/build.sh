#!/usr/bin/env bash
# Builds small local images for the container drivers' tests, without any registry:
#   scripts/testimage/build.sh [busybox|bash|all]   (default: busybox)
#     openshell-test/busybox:latest   rootfs = Debian's static busybox + applet links
#     openshell-test/bash:latest      the busybox rootfs plus /bin/bash and its libraries
# Both images carry a `sandbox` user (uid 1000), USER sandbox and WORKDIR /sandbox, so the
# drivers' hand-off of the image's USER/WorkingDir is exercised.
# Idempotent: an image that already exists is left alone (FORCE=1 rebuilds).
# ENGINE=podman builds into Podman instead of Docker: into every Podman service socket
# in PODMAN_SOCKETS (space-separated; default: the rootful and the rootless services
# scripts/setup-podman.sh starts), through the podman binary that script builds.
# ENGINE=containerd builds the images in Docker and imports them (docker save | ctr import)
# into the containerd of the Kubernetes test node (scripts/setup-kubernetes.sh), namespace
# k8s.io, where the kubelet finds them without a registry.
set -euo pipefail

ENGINE="${ENGINE:-docker}"
case "$ENGINE" in
docker | podman | containerd) ;;
*) echo "testimage: ENGINE=$ENGINE: use docker, podman or containerd" >&2; exit 2 ;;
esac
FORCE="${FORCE:-0}"
what="${1:-busybox}"

log() { echo "testimage: $*" >&2; }

# engine runs the engine's CLI; for podman, against the service at $PODMAN_URL.
engine() {
	if [[ "$ENGINE" == podman ]]; then
		"$PODMAN_BIN" --remote --url "$PODMAN_URL" "$@"
	else
		docker "$@"
	fi
}

have_image() { [[ "$FORCE" != 1 ]] && engine image inspect "$1" >/dev/null 2>&1; }

ensure_busybox_static() {
	if [[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1; then
		return 0
	fi
	log "installing busybox-static from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends busybox-static || {
		apt-get update -q
		apt-get install -y -q --no-install-recommends busybox-static
	}
}

# make_rootfs DIR: a minimal tree with busybox and one symlink per applet.
make_rootfs() {
	local root="$1"
	mkdir -p "$root"/{bin,etc,tmp,sandbox,root,proc,sys,dev}
	chmod 1777 "$root/tmp"
	cp /bin/busybox "$root/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[[ "$applet" == busybox ]] && continue
		[[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
	done
	ln -s bin "$root/sbin"
	mkdir -p "$root/usr"
	ln -s ../bin "$root/usr/bin"
	ln -s ../bin "$root/usr/sbin"
	printf 'root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\nsandbox:x:1000:\n' >"$root/etc/group"
	chown 1000:1000 "$root/sandbox"
}

import_rootfs() {
	local root="$1" ref="$2"
	log "importing $ref"
	tar -C "$root" --numeric-owner -c . |
		engine import \
			--change 'USER sandbox' \
			--change 'WORKDIR /sandbox' \
			--change 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' \
			--change 'CMD ["/bin/sh"]' \
			- "$ref" >/dev/null
	log "$ref: $(engine image inspect --format '{{.Id}}' "$ref")"
}

build_busybox() {
	local ref=openshell-test/busybox:latest
	if have_image "$ref"; then log "$ref exists"; return 0; fi
	ensure_busybox_static
	local tmp; tmp="$(mktemp -d)"
	trap 'rm -rf "${tmp:-}"; trap - RETURN' RETURN
	make_rootfs "$tmp/rootfs"
	import_rootfs "$tmp/rootfs" "$ref"
}

build_bash() {
	local ref=openshell-test/bash:latest
	if have_image "$ref"; then log "$ref exists"; return 0; fi
	ensure_busybox_static
	local tmp; tmp="$(mktemp -d)"
	trap 'rm -rf "${tmp:-}"; trap - RETURN' RETURN
	make_rootfs "$tmp/rootfs"
	rm -f "$tmp/rootfs/bin/bash"
	cp /bin/bash "$tmp/rootfs/bin/bash"
	# bash is dynamic: copy the loader and every library it links.
	local lib
	for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do
		mkdir -p "$tmp/rootfs$(dirname "$lib")"
		cp -L "$lib" "$tmp/rootfs$lib"
	done
	import_rootfs "$tmp/rootfs" "$ref"
}

build() {
	case "$what" in
	busybox) build_busybox ;;
	bash) build_bash ;;
	all) build_busybox; build_bash ;;
	*) echo "usage: $0 [busybox|bash|all]" >&2; exit 2 ;;
	esac
}

if [[ "$ENGINE" == podman ]]; then
	setup="$(dirname "$0")/../setup-podman.sh"
	PODMAN_BIN="${PODMAN_BIN:-$("$setup" env | sed -n 's/^OPENSHELL_PODMAN_BIN=//p')}"
	PODMAN_SOCKETS="${PODMAN_SOCKETS:-$("$setup" env | sed -n 's/^OPENSHELL_PODMAN_\(ROOTFUL\|ROOTLESS\)_SOCK=//p' | tr '\n' ' ')}"
	[[ -x "$PODMAN_BIN" ]] || { log "no podman binary at $PODMAN_BIN: run scripts/setup-podman.sh"; exit 1; }
	for sock in $PODMAN_SOCKETS; do
		PODMAN_URL="unix://$sock"
		log "podman service $sock"
		build
	done
elif [[ "$ENGINE" == containerd ]]; then
	setup="$(dirname "$0")/../setup-kubernetes.sh"
	kenv="$("$setup" env)"
	CTR="${CTR:-$(sed -n 's/^OPENSHELL_KUBE_CTR=//p' <<<"$kenv")}"
	CTRD_SOCK="${CTRD_SOCK:-$(sed -n 's/^OPENSHELL_KUBE_CONTAINERD_SOCK=//p' <<<"$kenv")}"
	[[ -x "$CTR" && -S "$CTRD_SOCK" ]] || { log "no test-node containerd at $CTRD_SOCK: run scripts/setup-kubernetes.sh"; exit 1; }
	case "$what" in
	all) refs=(openshell-test/busybox:latest openshell-test/bash:latest) ;;
	*) refs=("openshell-test/$what:latest") ;;
	esac
	ENGINE=docker
	build
	for ref in "${refs[@]}"; do
		# containerd names Docker Hub-style references in full.
		if [[ "$FORCE" != 1 ]] && "$CTR" --address "$CTRD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qx "docker.io/$ref"; then
			log "$ref exists in the test node's containerd"
			continue
		fi
		log "importing $ref into the test node's containerd"
		docker save "$ref" | "$CTR" --address "$CTRD_SOCK" -n k8s.io images import - >/dev/null
	done
else
	build
fi
