#!/usr/bin/env bash
# A SECOND Docker engine with user-namespace remapping (`--userns-remap=default`), next to the main
# one, for tests and trials: uid 1000 in its containers is the unprivileged host uid N+1000, where
# N is the start of dockremap's range in /etc/subuid. It has its own socket, data root, exec root,
# pid file, config file and containerd namespace, and no network of its own (--bridge=none, no
# iptables, no ip forwarding): it never touches the main engine, /etc/docker/daemon.json or the
# host's network.
#
#   scripts/userns-engine.sh start [IMAGE...]   start it (or reuse it), load the images
#                                               (default: agent-sandbox:minimal) from the main
#                                               engine, print its DOCKER_HOST on stdout
#   scripts/userns-engine.sh stop               stop it, remove its socket and pid files
#   scripts/userns-engine.sh purge              stop it and delete its data root (images too)
#   scripts/userns-engine.sh status             print its DOCKER_HOST if it answers, else exit 1
#
# Idempotent. Needs root and dockerd (scripts/ensure-engine.sh installs docker.io).
# Environment: USERNS_ENGINE_SOCKET (default /var/run/agent-sandbox-userns.sock),
# USERNS_ENGINE_DIR (default /var/lib/agent-sandbox-userns: data root, config and log),
# USERNS_ENGINE_SOURCE (the engine images come from; default unix:///var/run/docker.sock).
set -euo pipefail

log() { echo "[userns-engine] $*" >&2; }

NAME=agent-sandbox-userns
SOCKET=${USERNS_ENGINE_SOCKET:-/var/run/$NAME.sock}
STATE_DIR=${USERNS_ENGINE_DIR:-/var/lib/$NAME}
SOURCE=${USERNS_ENGINE_SOURCE:-unix:///var/run/docker.sock}
HOST="unix://$SOCKET"
DATA_ROOT="$STATE_DIR/data"
CONFIG="$STATE_DIR/daemon.json"
LOG="$STATE_DIR/dockerd.log"
EXEC_ROOT="/var/run/$NAME"
PIDFILE="/var/run/$NAME.pid"
CONTAINERD_PIDFILE="$EXEC_ROOT/containerd/containerd.pid"
REMAP_USER=dockremap

answers() { docker -H "$HOST" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# A live process (not a zombie) whose command line contains $2: never signal a recycled pid.
ours() {
  local pid=$1 marker=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}
pid_in() { [ -f "$1" ] && cat "$1" || true; }

require_root_and_dockerd() {
  local missing=()
  [ "$(id -u)" = 0 ] || missing+=("root (it starts a dockerd, which adds the user dockremap and its id ranges if missing)")
  command -v dockerd >/dev/null 2>&1 || missing+=("dockerd (scripts/ensure-engine.sh installs docker.io)")
  command -v docker >/dev/null 2>&1 || missing+=("the docker client")
  if [ ${#missing[@]} -gt 0 ]; then
    for what in "${missing[@]}"; do log "missing: $what"; done
    exit 1
  fi
}

# `--userns-remap=default` makes dockerd create the system user dockremap (useradd) and give it
# 65536 subordinate uids and gids (usermod -v/-w, the first free range from 100000). Check they
# are there: they are what the remapped ids are.
check_remap_ranges() {
  local file
  for file in /etc/subuid /etc/subgid; do
    if ! grep -q "^$REMAP_USER:" "$file" 2>/dev/null; then
      log "dockerd left no $REMAP_USER range in $file; add one (e.g. usermod --add-subuids"
      log "100000-165535 --add-subgids 100000-165535 $REMAP_USER) and start again"
      exit 1
    fi
  done
}

# The first host id of the remapped range (what root in a container is on the host).
range_start() { awk -F: -v user="$REMAP_USER" '$1 == user { print $2; exit }' "$1"; }

clean_stale() {
  local pid
  pid=$(pid_in "$PIDFILE")
  if [ -f "$PIDFILE" ] && ! ours "$pid" "$EXEC_ROOT"; then
    log "removing stale $PIDFILE"
    rm -f "$PIDFILE"
  fi
  pid=$(pid_in "$CONTAINERD_PIDFILE")
  if [ -f "$CONTAINERD_PIDFILE" ] && ! ours "$pid" "$EXEC_ROOT"; then
    log "removing stale $CONTAINERD_PIDFILE"
    rm -f "$CONTAINERD_PIDFILE"
  fi
  if [ -S "$SOCKET" ] && [ ! -f "$PIDFILE" ]; then
    rm -f "$SOCKET"
  fi
}

# Its own config file, so the main engine's /etc/docker/daemon.json is never read; the settings
# are flags, which a key in the file must not repeat. It only registers gVisor's runsc (as
# scripts/ensure-engine.sh does for the main engine) where it is installed, so the strict profile
# can run on a remapped engine too.
write_config() {
  mkdir -p "$STATE_DIR"
  local runsc
  runsc=$(command -v runsc || true)
  if [ -n "$runsc" ]; then
    printf '{"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=none"]}}}\n' "$runsc" >"$CONFIG"
  else
    echo '{}' >"$CONFIG"
  fi
}

start_daemon() {
  mkdir -p "$STATE_DIR" "$EXEC_ROOT"
  chmod 0711 "$STATE_DIR"  # the remapped root must be able to pass through to its data root
  log "starting dockerd with --userns-remap=default on $HOST (log: $LOG)"
  nohup dockerd \
    --host "$HOST" \
    --config-file "$CONFIG" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    --containerd-namespace "$NAME" \
    --containerd-plugins-namespace "$NAME-plugins" \
    --userns-remap default \
    --bridge none \
    --iptables=false \
    --ip6tables=false \
    --ip-forward=false \
    --ip-masq=false \
    --shutdown-timeout 5 \
    >"$LOG" 2>&1 </dev/null &
  DOCKERD_PID=$!
}

wait_until_it_answers() {
  local started=$SECONDS
  for _ in $(seq 1 120); do
    if answers; then
      log "engine ready after $((SECONDS - started)) s: $(docker -H "$HOST" version --format '{{.Server.Version}}')"
      return 0
    fi
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      log "dockerd exited (bad flag, missing id range...); the end of $LOG:"
      tail -n 20 "$LOG" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "dockerd did not answer within 60 s; the end of $LOG:"
  tail -n 20 "$LOG" >&2 || true
  exit 1
}

check_remapped() {
  local options
  options=$(docker -H "$HOST" info --format '{{json .SecurityOptions}}')
  case "$options" in
    *name=userns*) ;;
    *) log "the engine on $HOST answers but does not remap user namespaces: $options"; exit 1 ;;
  esac
}

load_image() {
  local image=$1 wanted have
  if ! wanted=$(docker -H "$SOURCE" image inspect --format '{{.Id}}' "$image" 2>/dev/null); then
    log "$image is not on the main engine ($SOURCE): build it first (make image)"
    exit 1
  fi
  have=$(docker -H "$HOST" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  if [ "$have" = "$wanted" ]; then
    log "$image is already loaded"
    return 0
  fi
  local started=$SECONDS
  log "loading $image from $SOURCE (its files are re-owned into the remapped range)..."
  docker -H "$SOURCE" save "$image" | docker -H "$HOST" load >/dev/null
  log "loaded $image in $((SECONDS - started)) s"
  # The copy it replaces (an older build under the same tag) would stay in the data root for good.
  docker -H "$HOST" image prune -f >/dev/null
}

cmd_start() {
  require_root_and_dockerd
  clean_stale
  write_config
  if answers; then
    log "the remapped engine already answers on $HOST (reloading its config)"
    kill -HUP "$(pid_in "$PIDFILE")" 2>/dev/null || true
  else
    start_daemon
    wait_until_it_answers
  fi
  check_remapped
  check_remap_ranges
  log "remapped range: uids from $(range_start /etc/subuid), gids from $(range_start /etc/subgid)"
  local images=("$@")
  [ ${#images[@]} -gt 0 ] || images=(agent-sandbox:minimal)
  for image in "${images[@]}"; do load_image "$image"; done
  echo "$HOST"
}

cmd_stop() {
  require_root_and_dockerd
  local pid
  pid=$(pid_in "$PIDFILE")
  if ours "$pid" "$EXEC_ROOT"; then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do ours "$pid" "$EXEC_ROOT" || break; sleep 0.5; done
    if ours "$pid" "$EXEC_ROOT"; then
      log "dockerd did not stop within 30 s: killing it"
      kill -KILL "$pid"
    fi
  else
    log "the remapped engine is not running"
  fi
  # Its containerd goes with it; if dockerd was killed, that one is left: stop it by its pid file.
  pid=$(pid_in "$CONTAINERD_PIDFILE")
  if ours "$pid" "$EXEC_ROOT"; then
    log "stopping the containerd it left (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 20); do ours "$pid" "$EXEC_ROOT" || break; sleep 0.5; done
    ours "$pid" "$EXEC_ROOT" && kill -KILL "$pid"
  fi
  rm -f "$SOCKET" "$PIDFILE" "$CONTAINERD_PIDFILE" "$EXEC_ROOT/containerd/containerd.sock" \
    "$EXEC_ROOT/containerd/containerd.sock.ttrpc" "$EXEC_ROOT/containerd/containerd-debug.sock"
  log "stopped"
}

cmd_purge() {
  cmd_stop
  if grep -q " $DATA_ROOT/" /proc/mounts; then
    log "something is still mounted under $DATA_ROOT; not deleting it"
    exit 1
  fi
  log "deleting $STATE_DIR"
  rm -rf "$STATE_DIR"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  purge) cmd_purge ;;
  status) answers && echo "$HOST" ;;
  *) echo "usage: $0 start [IMAGE...] | stop | purge | status" >&2; exit 2 ;;
esac
