#!/bin/bash
# Build, once, what scripts/ensure-cluster.sh needs for a single-node Kubernetes test cluster, from
# Debian's archive only (this machine kind reaches no Go module proxy and no container registry):
#   * Go 1.19, etcd 3.4.23 and the CNI loopback plugin: Debian .debs, unpacked, not installed
#   * Kubernetes v1.20.2 server binaries, built from Debian bookworm's `kubernetes` SOURCE package
#     (the whole upstream tree with vendor/) in GOPATH mode, offline
#   * a static "pause" image for containerd's pod sandboxes
# Everything lands under $K (default /var/cache/agent-sandbox/kubernetes-v1.20.2: outside the clone,
# keyed by version, so every later run reuses it). About 13 min on 2 cores from nothing; CPU work is niced.
# The walls this works around are written up in docs/kubernetes.md ("The test cluster").
set -euo pipefail
K=${K:-/var/cache/agent-sandbox/kubernetes-v1.20.2}
V=1.20.5+really1.20.2
SRC=$K/src/kubernetes-$V
HERE=$(cd "$(dirname "$0")" && pwd)
log() { echo "[build-cluster $(date +%T)] $*" >&2; }
mkdir -p $K/bin $K/deb $K/src $K/logs $K/image $K/cni/bin $K/cni/net.d
T() { local n=$1; shift; log "$n ..."; "$@" >$K/logs/build-$n.log 2>&1 || { tail -30 $K/logs/build-$n.log >&2; return 1; }; }

fetch() {
  # Binary .debs, unpacked under $K/deb/root (nothing installed system-wide).
  if [ ! -x $K/deb/root/usr/bin/etcd ]; then
    (cd $K/deb && apt-get download golang-1.19-go golang-1.19-src etcd-server containernetworking-plugins \
      golang-github-modern-go-reflect2-dev 2>&1 | grep -v 'unsandboxed' >&2 || true)
    for f in $K/deb/*.deb; do dpkg-deb -x $f $K/deb/root; done
  fi
  # The kubernetes source package, through a private deb-src list (the system's apt config is untouched).
  if [ ! -d $SRC ]; then
    mkdir -p $K/apt/lists/partial $K/apt/cache/archives/partial
    printf 'deb-src http://deb.debian.org/debian bookworm main\ndeb-src http://deb.debian.org/debian-security bookworm-security main\n' >$K/apt/sources.list
    local APTOPT="-o Dir::Etc::SourceList=$K/apt/sources.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$K/apt/lists -o Dir::Cache=$K/apt/cache"
    apt-get $APTOPT update -qq
    (cd $K/src && apt-get $APTOPT source -qq kubernetes=1.20.5+really1.20.2-1.1+deb12u1 2>&1 | grep -v 'unsandboxed' >&2 || true)
    [ -d $SRC ] || { log "apt-get source kubernetes failed"; exit 1; }
  fi
}

k8s() {
  export PATH=$K/deb/root/usr/lib/go-1.19/bin:$PATH GOROOT=$K/deb/root/usr/lib/go-1.19
  # Kubernetes 1.20 builds in GOPATH mode (its hack/lib/golang.sh sets GO111MODULE=off) against vendor/.
  export GOCACHE=$K/gocache GOPATH=$K/gopath GO111MODULE=off CGO_ENABLED=0 GOPROXY=off HOME=$K/src
  mkdir -p $GOPATH/src/k8s.io && ln -sfn $SRC $GOPATH/src/k8s.io/kubernetes
  cd $GOPATH/src/k8s.io/kubernetes
  # The vendored modern-go/reflect2 1.0.1 crashes kube-apiserver under Go >= 1.18
  # (fault in reflect2.(*UnsafeMapType).UnsafeIterate): use Debian's 1.0.2, same API.
  local R2=vendor/github.com/modern-go/reflect2
  if [ ! -f $R2/go_above_118.go ]; then
    rm -f $R2/*.go $R2/*.s
    cp $K/deb/root/usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
       $K/deb/root/usr/share/gocode/src/github.com/modern-go/reflect2/*.s $R2/
  fi
  # The generated OpenAPI code is made at build time and upstream's rule wants rsync: build openapi-gen
  # ourselves, then run upstream's make rule.
  if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
    mkdir -p _output/bin
    T openapi-gen nice -n 19 go build -o _output/bin/openapi-gen ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    touch _output/bin/openapi-gen
    T gen-openapi nice -n 19 make gen_openapi KUBE_VERBOSE=0
  fi
  local LD="-s -w" p c
  for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean"
    LD="$LD -X $p.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $p.buildDate=2021-01-13T13:20:00Z"
  done
  for c in kube-apiserver kubelet kube-scheduler kube-controller-manager; do
    [ -x $K/bin/$c ] || { T $c nice -n 19 go build -trimpath -ldflags="$LD" -o $K/bin/$c.part ./cmd/$c && mv $K/bin/$c.part $K/bin/$c; }
  done
}

support() {
  # CNI: the stock loopback plugin brings `lo` up; noip-cni reports the eth0 address containerd's CRI
  # insists on (a /32 on no interface), so pods have only `lo`.
  install -m 0755 $K/deb/root/usr/lib/cni/loopback $HERE/noip-cni $K/cni/bin/
  install -m 0644 $HERE/10-noip.conflist $K/cni/net.d/
  # pause: a tiny static C program (no registry to pull registry.k8s.io/pause from).
  if [ ! -f $K/image/pause.tar ]; then
    local d; d=$(mktemp -d)
    gcc -Os -static -o $d/pause $HERE/pause.c && strip $d/pause
    python3 $HERE/mkimage.py $d agent-sandbox.local/pause:1 $K/image/pause.tar --cmd '["/pause"]' --user 65535
    rm -rf $d
  fi
}

fetch; k8s; support
# The Go cache and the source tree only serve a rebuild; the binaries are all a cluster needs.
touch $K/.complete
log "built: $(ls $K/bin | tr '\n' ' ')"
