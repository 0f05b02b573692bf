#!/usr/bin/env bash
# Make sure a Docker engine answers. On Debian as root: install docker.io if
# dockerd is missing, start dockerd in the background if no daemon answers,
# then wait until it does. Elsewhere: say plainly what is missing. Idempotent.
set -euo pipefail

log() { echo "[ensure-engine] $*" >&2; }

if docker info >/dev/null 2>&1; then
  log "a Docker engine already answers"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no Docker engine answers and dockerd is not installed."
    log "Install Docker Engine (https://docs.docker.com/engine/install/) and start it, or run this script as root on Debian."
    exit 1
  fi
  log "installing docker.io (about a minute)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # policy-rc.d refuses to start services here (no init system); that is expected.
  apt-get install -y -qq docker.io >&2 || true
  command -v dockerd >/dev/null 2>&1 || { log "installing docker.io failed"; exit 1; }
fi

if [ "$(id -u)" != 0 ]; then
  log "dockerd is installed but not running, and starting it needs root: ask an administrator to start it."
  exit 1
fi

# A process that exists and is not a zombie (a killed daemon nobody reaped still shows in pgrep).
alive() { [ -n "$1" ] && [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

# A killed daemon leaves pid files behind (its own and its containerd's); the next dockerd
# refuses to start, or waits for a containerd that is gone, until they are removed.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ] && ! alive "$(cat "$pidfile")"; then
    log "removing stale $pidfile"
    rm -f "$pidfile"
  fi
done

running=""
for pid in $(pgrep -x dockerd || true); do
  if alive "$pid"; then running="$pid"; fi
done
if [ -z "$running" ]; then
  log "starting dockerd in the background (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "engine ready: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
