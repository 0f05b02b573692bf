#!/usr/bin/env bash
# Make sure a Docker engine answers. On Debian as root: install docker.io if
# dockerd is missing, start dockerd in the background if no daemon answers,
# then wait until it does. Elsewhere: say plainly what is missing. Idempotent.
set -euo pipefail

log() { echo "[ensure-engine] $*" >&2; }
# A process that exists and is not a zombie (a killed daemon nobody reaped still shows in pgrep).
alive() { [ -n "$1" ] && [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

# gVisor's runsc as a second runtime (engine.runtime = "runsc"): Debian packages it, and dockerd
# reloads its runtimes on SIGHUP. It needs --network=none to start containers without a network.
has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
register_runsc() {
  has_runsc && return 0
  if ! command -v runsc >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
    log "installing runsc (gVisor) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq runsc >&2 || { apt-get update -qq >&2 && apt-get install -y -qq runsc >&2; } ||
      { log "no runsc package: gVisor unavailable"; return 0; }
  fi
  mkdir -p /etc/docker 2>/dev/null || true
  [ -w /etc/docker ] || { log "cannot register runsc: /etc/docker is not writable"; return 0; }
  python3 -c '
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
path.write_text(json.dumps(config, indent=2) + "\n")
' "$(command -v runsc)"
  # The engine's own dockerd (its pid file), never another on this machine (scripts/userns-engine.sh).
  local main
  main="$(cat /var/run/docker.pid 2>/dev/null || true)"
  alive "$main" || { log "cannot register runsc: no /var/run/docker.pid of a live dockerd"; return 0; }
  kill -HUP "$main"
  for _ in $(seq 1 20); do has_runsc && { log "registered runsc (gVisor) with dockerd"; return 0; }; sleep 0.5; done
  log "dockerd did not pick up runsc; see /var/log/dockerd.log"
}

if docker info >/dev/null 2>&1; then
  log "a Docker engine already answers"
  register_runsc
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


# A killed daemon leaves pid files behind (its own and its containerd's); the next dockerd
# refuses to start, or waits for a containerd that is gone, until they are removed.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ] && ! alive "$(cat "$pidfile")"; then
    log "removing stale $pidfile"
    rm -f "$pidfile"
  fi
done

# The engine's own dockerd writes /var/run/docker.pid; another dockerd on this machine (such as
# scripts/userns-engine.sh's, with a pid file of its own) is not the engine.
if ! alive "$(cat /var/run/docker.pid 2>/dev/null || true)"; then
  log "starting dockerd in the background (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "engine ready: $(docker version --format '{{.Server.Version}}')"
    register_runsc
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
