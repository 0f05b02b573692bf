#!/bin/bash
# down.sh — stop the test cluster: everything up.sh started (by pid file only), remove pod containers,
# mounts and cgroups it left, restore the sysctls kubelet changed.
# `down.sh --purge` also deletes the state dir (etcd data, pki, images, kubelet root).
set -uo pipefail
K=${K:-/var/cache/agent-sandbox/kubernetes-v1.20.2}; D=${D:-/var/lib/agent-sandbox-kubernetes}; R=${R:-/run/agent-sandbox-kubernetes}
P=$D/pki
CTR="${CTR:-/usr/bin/ctr} -a $R/containerd.sock -n k8s.io"
log() { echo "[$(date +%T)] $*"; }
# A process that exists and is not a zombie (a killed one its reaper has not collected yet).
running() { [ -r /proc/$1/status ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status; }
alive() { [ -f $R/$1.pid ] && running "$(cat $R/$1.pid)"; }
stop() { # name: TERM, wait up to 10s, KILL — only the pid we recorded
  alive $1 || { rm -f $R/$1.pid; return; }
  local pid; pid=$(cat $R/$1.pid)
  kill -TERM $pid
  for _ in $(seq 50); do running $pid || break; sleep 0.2; done
  running $pid && kill -KILL $pid
  rm -f $R/$1.pid
  log "stopped $1 ($pid)"
}

# 1. let the kubelet kill pods cleanly while everything still runs
if alive kube-apiserver && alive kubelet; then
  curl -sf --cacert $P/ca.crt --cert $P/admin.crt --key $P/admin.key \
    "https://127.0.0.1:6443/api/v1/pods" | python3 -c '
import json,sys
for p in json.load(sys.stdin)["items"]: print(p["metadata"]["namespace"], p["metadata"]["name"])' |
  while read -r ns name; do
    curl -sf -X DELETE --cacert $P/ca.crt --cert $P/admin.crt --key $P/admin.key \
      "https://127.0.0.1:6443/api/v1/namespaces/$ns/pods/$name?gracePeriodSeconds=0" >/dev/null
  done
  for _ in $(seq 75); do
    [ -z "$($CTR tasks ls -q 2>/dev/null)" ] && break; sleep 0.2
  done
fi
# 2. control plane + kubelet
for n in kube-controller-manager kube-scheduler kubelet kube-apiserver etcd; do stop $n; done
# 3. any task the kubelet left: kill + delete via our containerd, then stop it
if alive containerd; then
  for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL $t >/dev/null 2>&1; done
  sleep 1
  for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks delete -f $t >/dev/null 2>&1; done
  for c in $($CTR containers ls -q 2>/dev/null); do $CTR containers delete $c >/dev/null 2>&1; done
fi
stop containerd
# shims outlive containerd by design; end the ones bound to OUR socket (pid by pid)
for pid in $(ps -eo pid=,args= | awk -v a="-address $R/containerd.sock" 'index($0, "containerd-shim") && index($0, a) {print $1}'); do
  kill -TERM $pid 2>/dev/null && log "ended leftover shim $pid"
done
# 4. leftovers: mounts under our dirs (deepest first), CNI netns whose pause is gone, kubepods cgroups
grep -E " ($D|$R)/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  ip netns pids "$(basename $ns)" 2>/dev/null | grep -q . || ip netns delete "$(basename $ns)" 2>/dev/null
done
for ctl in /sys/fs/cgroup/*/; do
  [ -d ${ctl}kubepods ] && find ${ctl}kubepods -depth -type d -exec rmdir {} \; 2>/dev/null
done
# 5. sysctls kubelet changed
if [ -f $R/sysctl.orig ]; then sysctl -q -p $R/sysctl.orig && rm -f $R/sysctl.orig && log "sysctls restored"; fi
# 6. the runtime folder (pids, sockets, containerd's and runc's state): nothing runs any more
#    (kept if the sysctls could not be restored: it holds their old values)
[ -f $R/sysctl.orig ] || rm -rf $R
if [ "${1:-}" = "--purge" ]; then
  rm -rf $D $R /var/log/pods/* /var/log/containers/* /var/lib/kubelet/device-plugins  # kubelet 1.20 hard-codes these
  rm -f /var/lib/cni/results/agent-sandbox-noip-* /var/lib/cni/results/cni-loopback-*        # containerd's CNI result cache
  rmdir /var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni/results /var/lib/cni 2>/dev/null
  rmdir /run/containerd/s /run/containerd 2>/dev/null   # shim socket dir (removed only if empty)
  log "purged $D $R"
fi
log "down"
