#!/usr/bin/env bash
# Sets up Podman 5 for the podman compute driver and its tests.
#   scripts/setup-podman.sh [start]   install the runtime packages from Debian, build podman
#                                     and rootlessport from the Go module proxy (cached by
#                                     version), create the unprivileged test user, start a
#                                     rootful and a rootless `podman system service`
#   scripts/setup-podman.sh build     only install packages and build the binaries
#   scripts/setup-podman.sh env       print the variables the tests read (KEY=VALUE lines)
#   scripts/setup-podman.sh podman4   unpack Debian's Podman 4.3 (not installed) for the
#                                     test that shows the driver refusing a Podman 4 service
#   scripts/setup-podman.sh status    exit 0 when the rootful and the rootless service answer
#   scripts/setup-podman.sh stop      stop the services this script started (by pid file)
# Idempotent: binaries already in the cache are reused, services that answer are left alone.
#
# Debian 12 ships Podman 4.3, which the driver refuses; Podman 5 is built from source here
# (~3 min on two cores, once per machine and version). The binaries land in
#   $OPENSHELL_CACHE/podman/$PODMAN_VERSION/bin/{podman,rootlessport}
# and a containers.conf next to them points podman at Debian's conmon/runc/netavark.
set -euo pipefail

PODMAN_VERSION="${OPENSHELL_PODMAN_VERSION:-v5.4.2}"
CACHE="${OPENSHELL_CACHE:-$HOME/.cache/openshell}/podman/$PODMAN_VERSION"
BIN="$CACHE/bin"
STATE_DIR="${OPENSHELL_PODMAN_STATE_DIR:-/var/lib/openshell/podman}"
TEST_USER="${OPENSHELL_PODMAN_USER:-openshell-podman}"
ROOTFUL_SOCK="/run/podman/podman.sock"
TIMEOUT="${OPENSHELL_PODMAN_TIMEOUT:-60}"
EXEC_CLEANUP_DELAY=10 # seconds; see write_config
BUILD_TAGS="seccomp exclude_graphdriver_btrfs btrfs_noversion exclude_graphdriver_devicemapper"

log() { echo "setup-podman: $*" >&2; }

export DEBIAN_FRONTEND=noninteractive
export PODMAN_IGNORE_CGROUPSV1_WARNING=1

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install_packages() {
	# Runtime helpers podman execs, and the headers the build links against.
	apt_install conmon runc netavark aardvark-dns slirp4netns uidmap fuse-overlayfs catatonit \
		libseccomp-dev libgpgme-dev pkg-config gcc
}

build_binaries() {
	if [[ -x "$BIN/podman" && -x "$BIN/rootlessport" ]] &&
		"$BIN/podman" --version 2>/dev/null | grep -q "${PODMAN_VERSION#v}"; then
		log "podman $PODMAN_VERSION cached in $BIN"
		return 0
	fi
	command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
	log "building podman $PODMAN_VERSION from the Go module proxy (about 3 min)"
	local dir
	dir="$(GOFLAGS=-mod=mod go mod download -json "github.com/containers/podman/v5@$PODMAN_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$dir" ]] || { log "go mod download gave no module dir for podman $PODMAN_VERSION"; exit 1; }
	mkdir -p "$BIN.tmp"
	(cd "$dir" && GOFLAGS=-mod=mod CGO_ENABLED=1 go build -trimpath -tags "$BUILD_TAGS" \
		-o "$BIN.tmp/" ./cmd/podman ./cmd/rootlessport)
	rm -rf "$BIN"
	mv "$BIN.tmp" "$BIN"
	log "built $("$BIN/podman" --version)"
}

write_config() {
	# One containers.conf for both services: Debian's runc (its crun fails on a cgroups v1
	# layout), rootlessport from the cache, cgroupfs (no systemd here).
	mkdir -p "$CACHE"
	cat >"$CACHE/containers.conf" <<EOF
[engine]
# An exec session through the API keeps its conmon (two processes) this long after
# the command ends, then cleans up; the default is 300 s, so every probe left them
# for five minutes. The client reads the exit code and removes the session at once,
# so a few seconds is enough; 0 is not (the clean-up can win that race: "no exec
# session ... found", 1 of 60 execs here).
exit_command_delay = $EXEC_CLEANUP_DELAY
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
helper_binaries_dir = ["$BIN", "/usr/libexec/podman", "/usr/lib/podman"]
conmon_path = ["/usr/bin/conmon"]

[network]
network_backend = "netavark"
# Debian 12's pasta is too old for Podman 5; slirp4netns is what the driver uses too.
default_rootless_network_cmd = "slirp4netns"

[containers]
log_driver = "k8s-file"
EOF
	chmod 0644 "$CACHE/containers.conf"
	# Image imports and builds need a signature policy; Debian's containers-common
	# would bring one but also an older containers.conf. Write the default (accept
	# anything, as Debian ships it) only when the host has none.
	if [[ ! -f /etc/containers/policy.json ]]; then
		mkdir -p /etc/containers
		printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >/etc/containers/policy.json
	fi
	# The rootless user must be able to read the binaries and the config.
	local d="$CACHE"
	while [[ "$d" != / ]]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
	chmod -R o+rX "$CACHE"
}

ensure_user() {
	if ! id "$TEST_USER" >/dev/null 2>&1; then
		log "creating unprivileged user $TEST_USER"
		useradd --create-home --shell /bin/bash "$TEST_USER"
	fi
	grep -q "^$TEST_USER:" /etc/subuid || usermod --add-subuids 200000-265535 "$TEST_USER"
	grep -q "^$TEST_USER:" /etc/subgid || usermod --add-subgids 200000-265535 "$TEST_USER"
	# slirp4netns opens /dev/net/tun as the user.
	[[ -c /dev/net/tun ]] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
	chmod 0666 /dev/net/tun
}

# Debian's podman 4.3 package, unpacked into the cache (never installed: it would put
# its own podman on PATH), so a test can start a real Podman 4 service.
PODMAN4_DIR="${OPENSHELL_CACHE:-$HOME/.cache/openshell}/podman/debian-4"
unpack_podman4() {
	if [[ -x "$PODMAN4_DIR/usr/bin/podman" ]]; then
		return 0
	fi
	log "unpacking Debian's podman 4 into $PODMAN4_DIR"
	local tmp
	tmp="$(mktemp -d)"
	(cd "$tmp" && apt-get download podman >/dev/null 2>&1 || { apt-get update -q && apt-get download podman; })
	rm -rf "$PODMAN4_DIR"
	dpkg-deb -x "$tmp"/podman_*.deb "$PODMAN4_DIR"
	rm -rf "$tmp"
}

user_uid() { id -u "$TEST_USER"; }
rootless_sock() {
	local uid
	uid="$(user_uid 2>/dev/null)" || { echo ""; return 0; }
	echo "/run/user/$uid/podman/podman.sock"
}

answers() { curl -fsS --max-time 2 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }

# start_service NAME SOCK [setpriv args...]
start_service() {
	local name="$1" sock="$2"
	shift 2
	local pidf="$STATE_DIR/$name.pid" logf="$STATE_DIR/$name.log" conff="$STATE_DIR/$name.conf-sum"
	local sum
	sum="$(sha256sum <"$CACHE/containers.conf")"
	# A service this script started with another containers.conf is restarted (its
	# containers keep running: conmon holds them, not the service).
	if [[ -f "$pidf" ]] && ! [[ -f "$conff" && "$(cat "$conff")" == "$sum" ]]; then
		log "$name service runs with an older containers.conf; restarting it"
		stop_service "$name"
	fi
	if answers "$sock"; then
		log "$name service answers on $sock"
		return 0
	fi
	if [[ -f "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
		log "$name service already started (pid $(cat "$pidf")), waiting for it"
	else
		log "starting $name podman service on $sock (log: $logf)"
		rm -f "$sock"
		# setsid: a session of its own, so the service outlives the shell (and the
		# process group) that started it; `stop` ends it by its pid file.
		# From /: the rootless service's user may not enter the caller's directory.
		(cd / && exec setsid nohup "$@" env CONTAINERS_CONF="$CACHE/containers.conf" PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
			"$BIN/podman" system service --time=0 "unix://$sock" >"$logf" 2>&1 </dev/null) &
		echo $! >"$pidf"
		echo "$sum" >"$conff"
	fi
	local pid
	pid="$(cat "$pidf")"
	for _ in $(seq 1 $((TIMEOUT * 10))); do
		answers "$sock" && { log "$name service answers (pid $pid)"; return 0; }
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$name service (pid $pid) exited; last lines of $logf:"
			tail -n 20 "$logf" >&2 || true
			rm -f "$pidf"
			exit 1
		fi
		sleep 0.1
	done
	log "$name service did not answer within ${TIMEOUT}s; see $logf"
	exit 1
}

start_services() {
	apt_install curl
	mkdir -p "$STATE_DIR" /run/podman
	shared_netns_dir
	start_service rootful "$ROOTFUL_SOCK"
	local uid run
	uid="$(user_uid)"
	run="/run/user/$uid"
	mkdir -p "$run/podman"
	chown "$uid:$uid" "$run" "$run/podman"
	chmod 0700 "$run" "$run/podman"
	touch "$STATE_DIR/rootless.log"
	chown "$uid" "$STATE_DIR/rootless.log"
	start_service rootless "$(rootless_sock)" \
		setpriv --reuid "$uid" --regid "$uid" --init-groups \
		env HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" USER="$TEST_USER" XDG_RUNTIME_DIR="$run"
}

stop_service() {
	local name="$1" pidf="$STATE_DIR/$1.pid"
	[[ -f "$pidf" ]] || { log "$name: no pid file, this script did not start it"; return 0; }
	local pid
	pid="$(cat "$pidf")"
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping $name service (pid $pid)"
		kill -TERM "$pid"
		for _ in $(seq 1 $((TIMEOUT * 10))); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidf" "$STATE_DIR/$name.conf-sum"
}

print_env() {
	echo "OPENSHELL_PODMAN_BIN=$BIN/podman"
	echo "OPENSHELL_PODMAN_CONF=$CACHE/containers.conf"
	echo "OPENSHELL_PODMAN_ROOTFUL_SOCK=$ROOTFUL_SOCK"
	echo "OPENSHELL_PODMAN_ROOTLESS_SOCK=$(rootless_sock)"
	echo "OPENSHELL_PODMAN_USER=$TEST_USER"
	echo "OPENSHELL_PODMAN4_BIN=$PODMAN4_DIR/usr/bin/podman"
}

case "${1:-start}" in
build)
	install_packages
	build_binaries
	write_config
	;;
start)
	install_packages
	build_binaries
	write_config
	unpack_podman4
	ensure_user
	start_services
	print_env
	;;
podman4) unpack_podman4 ;;
env) print_env ;;
status)
	# Exit 0 when both services answer (callers then leave them running).
	command -v curl >/dev/null && id "$TEST_USER" >/dev/null 2>&1 &&
		answers "$ROOTFUL_SOCK" && answers "$(rootless_sock)"
	;;
stop)
	started_rootless=false
	[[ -f "$STATE_DIR/rootless.pid" ]] && started_rootless=true
	stop_service rootless
	stop_service rootful
	# The rootless service left its user namespace's pause process (podman records
	# its pid); stop it too when this script started that service.
	if $started_rootless && id "$TEST_USER" >/dev/null 2>&1; then
		pause="/run/user/$(user_uid)/libpod/tmp/pause.pid"
		if [[ -f "$pause" ]] && kill -0 "$(cat "$pause")" 2>/dev/null; then
			log "stopping the rootless pause process (pid $(cat "$pause"))"
			kill -TERM "$(cat "$pause")" || true
		fi
		# Podman keeps an exec session's conmon for exit_command_delay after it ends
		# (see write_config); the test user runs nothing else, so end whatever of its
		# processes remain.
		pkill -TERM -U "$(user_uid)" || true
	fi
	;;
*)
	echo "usage: $0 [start|build|env|status|podman4|stop]" >&2
	exit 2
	;;
esac
