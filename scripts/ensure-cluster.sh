#!/usr/bin/env bash
# The Kubernetes test cluster: a real single-node cluster (Kubernetes v1.20.2: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and a containerd of its own, never the Docker
# engine's), on loopback only, with pods that have no network but `lo`.
#
#   scripts/ensure-cluster.sh up [IMAGE...]          build once, start, load Docker images into it
#   scripts/ensure-cluster.sh load IMAGE...          load (or refresh) Docker images into it
#   scripts/ensure-cluster.sh down [--purge]         stop it; restore the sysctls the kubelet changed
#   scripts/ensure-cluster.sh run [IMAGE...] -- CMD  up, run CMD with SANDBOX_TESTS_KUBECONFIG set,
#                                                    then down whatever happened (unless it was up
#                                                    before: `make cluster`); CMD's exit code. Not
#                                                    root: CMD runs without a cluster (its tests skip)
#
# No Kubernetes is packaged for Debian and this machine kind reaches no Go module proxy: the
# binaries are built from Debian bookworm's `kubernetes` source package (scripts/kubernetes/build.sh,
# about 4-13 min on 2 cores) into $K, outside the clone and keyed by version, so later runs reuse
# them. State lives in $D (kept between runs: etcd, the images in containerd), sockets and pids in
# $R. Needs root on Debian, with containerd and runc (scripts/ensure-engine.sh installs docker.io,
# which brings both). docs/kubernetes.md ("The test cluster") says what it proves and what not.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export K=${K:-/var/cache/agent-sandbox/kubernetes-v1.20.2}
export D=${D:-/var/lib/agent-sandbox-kubernetes}
export R=${R:-/run/agent-sandbox-kubernetes}
# The kubelet's per-pod process limit (Kubernetes has no per-pod setting): limits.pids of
# configs/default.toml, which the Kubernetes backend holds runs to (docs/kubernetes.md).
export POD_PIDS_LIMIT=${POD_PIDS_LIMIT:-128}
KUBECONFIG_FILE=$D/admin.kubeconfig
CTR="ctr -a $R/containerd.sock -n k8s.io"

log() { echo "[ensure-cluster $(date +%T)] $*" >&2; }

prerequisites() {
  [ "$(id -u)" = 0 ] || { log "the test cluster needs root (it runs a kubelet)"; exit 1; }
  local missing=()
  # dpkg-source (dpkg-dev) unpacks the source package; make runs upstream's OpenAPI rule.
  for tool in containerd ctr runc gcc openssl curl dpkg-source make; do
    command -v $tool >/dev/null 2>&1 || missing+=($tool)
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing what provides ${missing[*]} ..."
    local packages="containerd runc gcc libc6-dev openssl curl dpkg-dev make"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq $packages >&2 || { apt-get update -qq >&2 && apt-get install -y -qq $packages >&2; }
  fi
}

build() {
  if [ -f "$K/.complete" ]; then return; fi
  log "building Kubernetes v1.20.2 from Debian's source package into $K (once; about 4-13 min) ..."
  local t0=$SECONDS
  nice -n 19 bash "$HERE/kubernetes/build.sh"
  log "built in $((SECONDS - t0)) s"
}

# A Docker image into the cluster's containerd, unless the same image id is already there.
load() {
  mkdir -p "$D/images"
  local image id stamp
  for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null) || { log "no Docker image $image: build it first"; exit 1; }
    stamp="$D/images/$(echo "$image" | tr '/:' '__')"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then continue; fi
    log "loading $image into the cluster ..."
    docker save "$image" | $CTR images import --no-unpack=false - >/dev/null
    echo "$id" >"$stamp"
  done
}

up() {
  prerequisites
  build
  bash "$HERE/kubernetes/up.sh" 2>&1 | sed 's/^/  /' >&2
  [ $# -eq 0 ] || load "$@"
  log "cluster up: export KUBECONFIG=$KUBECONFIG_FILE"
}

down() {
  bash "$HERE/kubernetes/down.sh" "$@" 2>&1 | sed 's/^/  /' >&2
}

case "${1:-}" in
  up) shift; up "$@" ;;
  load) shift; load "$@" ;;
  down) shift; down "$@" ;;
  run)
    shift
    images=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do images+=("$1"); shift; done
    [ "${1:-}" = "--" ] || { echo "usage: $0 run [IMAGE...] -- COMMAND..." >&2; exit 2; }
    shift
    if [ "$(id -u)" != 0 ]; then
      log "not root: no test cluster (the Kubernetes tests skip unless CI requires them)"
      exec "$@"
    fi
    # Someone's cluster (make cluster) stays up; one started here is stopped whatever happens.
    if ! curl -sf --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" \
        https://127.0.0.1:6443/readyz >/dev/null 2>&1; then
      trap down EXIT
    fi
    up "${images[@]}"
    SANDBOX_TESTS_KUBECONFIG=$KUBECONFIG_FILE "$@"
    ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
