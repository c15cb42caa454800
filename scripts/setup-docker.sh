#!/usr/bin/env bash
# Sets up the Docker engine the docker compute driver and its tests use.
#   scripts/setup-docker.sh         install docker.io if dockerd is missing, start dockerd
#                                   if the daemon does not answer, wait until it does
#   scripts/setup-docker.sh stop    stop the dockerd this script started (by its pid file)
# Idempotent: running it again with a daemon that answers does nothing.
set -euo pipefail

STATE_DIR="${OPENSHELL_DOCKER_STATE_DIR:-/var/lib/openshell/dockerd}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
TIMEOUT="${OPENSHELL_DOCKER_TIMEOUT:-60}"

log() { echo "setup-docker: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

answers() { docker version >/dev/null 2>&1; }

stop_daemon() {
	if [[ ! -f "$PID_FILE" ]]; then
		log "no pid file at $PID_FILE: this script did not start a dockerd; nothing to stop"
		return 0
	fi
	local pid
	pid="$(cat "$PID_FILE")"
	if ! kill -0 "$pid" 2>/dev/null; then
		log "dockerd pid $pid is not running; removing stale $PID_FILE"
		rm -f "$PID_FILE"
		return 0
	fi
	log "stopping dockerd (pid $pid)"
	kill -TERM "$pid"
	for _ in $(seq 1 $((TIMEOUT * 10))); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; log "dockerd stopped"; return 0; }
		sleep 0.1
	done
	log "dockerd (pid $pid) did not exit within ${TIMEOUT}s; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$PID_FILE"
}

install_engine() {
	if command -v dockerd >/dev/null 2>&1; then
		log "dockerd present: $(command -v dockerd)"
		return 0
	fi
	apt_install docker.io
}

install_cli() {
	if command -v docker >/dev/null 2>&1; then
		return 0
	fi
	# docker.io ships the CLI too; this only triggers when dockerd came from elsewhere.
	apt_install docker.io
}

start_daemon() {
	if answers; then
		log "Docker daemon answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
		return 0
	fi
	mkdir -p "$STATE_DIR"
	if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
		log "dockerd already started by this script (pid $(cat "$PID_FILE")), waiting for it"
	else
		log "starting dockerd in the background (log: $LOG_FILE, pid file: $PID_FILE)"
		nohup dockerd >"$LOG_FILE" 2>&1 </dev/null &
		echo $! >"$PID_FILE"
	fi
	local pid
	pid="$(cat "$PID_FILE")"
	for _ in $(seq 1 $((TIMEOUT * 10))); do
		if answers; then
			log "Docker daemon answers (pid $pid): $(docker version --format '{{.Server.Version}}')"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			log "dockerd (pid $pid) exited; last lines of $LOG_FILE:"
			tail -n 20 "$LOG_FILE" >&2 || true
			rm -f "$PID_FILE"
			exit 1
		fi
		sleep 0.1
	done
	log "dockerd (pid $pid) did not answer 'docker version' within ${TIMEOUT}s; see $LOG_FILE"
	tail -n 20 "$LOG_FILE" >&2 || true
	exit 1
}

case "${1:-start}" in
start)
	install_engine
	install_cli
	start_daemon
	;;
stop)
	stop_daemon
	;;
*)
	echo "usage: $0 [start|stop]" >&2
	exit 2
	;;
esac
