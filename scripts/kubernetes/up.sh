#!/bin/bash
# up.sh — start the single-node test cluster (Kubernetes v1.20.2 from build.sh) on loopback
# only: etcd, kube-apiserver, a private containerd (never the Docker engine's), kubelet,
# kube-scheduler and kube-controller-manager. Idempotent; scripts/ensure-cluster.sh calls it.
# Pods get only "lo" (no network). Nothing listens on anything but 127.0.0.1.
set -euo pipefail
K=${K:-/var/cache/agent-sandbox/kubernetes-v1.20.2}  # binaries, pause image, CNI (build.sh)
D=${D:-/var/lib/agent-sandbox-kubernetes}  # state: pki, etcd, containerd root, kubelet root, logs
R=${R:-/run/agent-sandbox-kubernetes}      # sockets, pid files, containerd state
B=$K/bin
P=$D/pki
NODE=${NODE:-localhost}         # node name == Hostname address the apiserver dials (-> 127.0.0.1)
ETCD=${ETCD:-$K/deb/root/usr/bin/etcd}
CONTAINERD=${CONTAINERD:-/usr/bin/containerd}
CTR="${CTR:-/usr/bin/ctr} -a $R/containerd.sock -n k8s.io"
T0=$(date +%s.%N)
mkdir -p $P $D/logs $D/etcd $D/kubelet $D/containerd $R
log() { printf '[%s +%5.1fs] %s\n' "$(date +%T)" "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }

# A process that exists and is not a zombie (a killed one its reaper has not collected yet).
running() { [ -r /proc/$1/status ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status; }
start() { # name cmd... : background, own session, pid file, log file
  local n=$1; shift
  if [ -f $R/$n.pid ] && running "$(cat $R/$n.pid)"; then log "$n already running"; return; fi
  setsid "$@" >>$D/logs/$n.log 2>&1 </dev/null &
  echo $! >$R/$n.pid
  log "started $n (pid $!)"
}
wait_for() { # what seconds cmd...
  local w=$1 end=$(($(date +%s) + $2)); shift 2
  while [ "$(date +%s)" -lt $end ]; do
    if "$@" >/dev/null 2>&1; then log "$w ready"; return 0; fi
    sleep 0.2
  done
  log "TIMEOUT waiting for $w"; return 1
}
api() { curl -sf --cacert $P/ca.crt --cert $P/admin.crt --key $P/admin.key "https://127.0.0.1:6443$1" "${@:2}"; }

# ---------------------------------------------------------------- PKI (openssl, EC P-256)
leaf() { # name subject eku [san]
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
  [ -n "${4:-}" ] && ext="$ext
subjectAltName=$4"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $P/$1.key \
    -subj "$2" -out $P/$1.csr 2>/dev/null
  openssl x509 -req -in $P/$1.csr -CA $P/ca.crt -CAkey $P/ca.key -CAcreateserial -days 3650 \
    -out $P/$1.crt -extfile <(echo "$ext") 2>/dev/null
  rm -f $P/$1.csr
}
kubeconfig() { # file cert
  cat >$D/$1.kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agent-sandbox-test
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$P/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$P/$2.crt", client-key: "$P/$2.key"}
contexts:
- name: agent-sandbox-test
  context: {cluster: agent-sandbox-test, user: $2}
current-context: agent-sandbox-test
EOF
}
if [ ! -f $P/ca.crt ]; then
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout $P/ca.key -out $P/ca.crt -subj "/CN=agent-sandbox-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  leaf apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
  leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  leaf admin "/O=system:masters/CN=agent-sandbox-test-admin" clientAuth
  leaf kube-scheduler "/CN=system:kube-scheduler" clientAuth
  leaf kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  leaf kubelet-client "/O=system:nodes/CN=system:node:$NODE" clientAuth
  leaf kubelet-server "/CN=$NODE" serverAuth "DNS:$NODE,DNS:localhost,IP:127.0.0.1"
  openssl ecparam -name prime256v1 -genkey -noout -out $P/sa.key
  openssl ec -in $P/sa.key -pubout -out $P/sa.pub 2>/dev/null
  umask 022
  kubeconfig admin admin
  kubeconfig kubelet kubelet-client
  kubeconfig scheduler kube-scheduler
  kubeconfig controller-manager kube-controller-manager
  log "pki + kubeconfigs written to $P"
fi

# ---------------------------------------------------------------- etcd (loopback, plain http)
start etcd $ETCD --name agent-sandbox-test --data-dir $D/etcd \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster agent-sandbox-test=http://127.0.0.1:2380 --initial-cluster-state new \
  --quota-backend-bytes=2147483648 --snapshot-count=10000
wait_for etcd 30 curl -sf http://127.0.0.1:2379/health

# ---------------------------------------------------------------- kube-apiserver
start kube-apiserver $B/kube-apiserver \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
  --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key --client-ca-file=$P/ca.crt \
  --kubelet-client-certificate=$P/apiserver-kubelet-client.crt --kubelet-client-key=$P/apiserver-kubelet-client.key \
  --kubelet-certificate-authority=$P/ca.crt --kubelet-preferred-address-types=Hostname \
  --service-account-key-file=$P/sa.pub --service-account-signing-key-file=$P/sa.key \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --anonymous-auth=false --allow-privileged=false --profiling=false --v=1

# ---------------------------------------------------------------- containerd (private instance)
mkdir -p $D/containerd-opt
cat >$D/containerd.toml <<EOF
version = 2
root = "$D/containerd"
state = "$R/containerd"
[grpc]
  address = "$R/containerd.sock"
[ttrpc]
  address = "$R/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "agent-sandbox.local/pause:1"
  enable_selinux = false
  disable_apparmor = true
  # this machine's bounding set lacks CAP_SYS_RESOURCE: runc cannot set oom_score_adj < 0
  # ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied"), so clamp it
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "${RUNC:-/usr/sbin/runc}"
        Root = "$R/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$K/cni/bin"
    conf_dir = "$K/cni/net.d"
EOF
start containerd $CONTAINERD --config $D/containerd.toml
wait_for containerd 30 $CTR version
if ! $CTR images ls -q | grep -qx agent-sandbox.local/pause:1; then
  $CTR images import $K/image/pause.tar >/dev/null && log "imported the pause image"
fi

wait_for kube-apiserver 90 api /readyz

# ---------------------------------------------------------------- kubelet
# kubelet sets vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1; down.sh restores these.
[ -f $R/sysctl.orig ] || sysctl vm.overcommit_memory kernel.panic kernel.panic_on_oops | tr -d ' ' >$R/sysctl.orig
cat >$D/kubelet-config.yaml <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: AlwaysAllow}
tlsCertFile: "$P/kubelet-server.crt"
tlsPrivateKeyFile: "$P/kubelet-server.key"
cgroupDriver: cgroupfs
failSwapOn: true
makeIPTablesUtilChains: false
protectKernelDefaults: false
featureGates: {SizeMemoryBackedVolumes: true}
podPidsLimit: ${POD_PIDS_LIMIT:-1024}
maxPods: 50
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
clusterDomain: cluster.local
resolvConf: ""
runtimeRequestTimeout: 2m
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF
KUBELET_T0=$(date -u +%Y-%m-%dT%H:%M:%SZ)
start kubelet $B/kubelet --config=$D/kubelet-config.yaml --kubeconfig=$D/kubelet.kubeconfig \
  --container-runtime=remote --container-runtime-endpoint=unix://$R/containerd.sock \
  --hostname-override=$NODE --root-dir=$D/kubelet --v=1

# ---------------------------------------------------------------- kube-scheduler (+ kube-controller-manager)
start kube-scheduler $B/kube-scheduler --kubeconfig=$D/scheduler.kubeconfig \
  --authentication-kubeconfig=$D/scheduler.kubeconfig --authorization-kubeconfig=$D/scheduler.kubeconfig \
  --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false --v=1
if [ -x $B/kube-controller-manager ]; then
  start kube-controller-manager $B/kube-controller-manager --kubeconfig=$D/controller-manager.kubeconfig \
    --authentication-kubeconfig=$D/controller-manager.kubeconfig --authorization-kubeconfig=$D/controller-manager.kubeconfig \
    --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
    --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt --use-service-account-credentials=true \
    --cluster-signing-cert-file=$P/ca.crt --cluster-signing-key-file=$P/ca.key --v=1
else
  # no controller-manager: the ServiceAccount admission plugin still wants "default" to exist
  api /api/v1/namespaces/default/serviceaccounts -X POST -H 'Content-Type: application/json' \
    -d '{"metadata":{"name":"default"}}' >/dev/null 2>&1 || true
fi

# Ready must come from THIS kubelet (heartbeat after we started it: etcd keeps the old node object),
# and the node must carry no NoSchedule/NoExecute taint (the node-lifecycle controller adds
# node.kubernetes.io/unreachable after a restart and lifts it a few seconds after Ready).
node_ready() {
  api /api/v1/nodes/$NODE | T0=$KUBELET_T0 python3 -c '
import json, os, sys
n = json.load(sys.stdin)
ok = any(c["type"] == "Ready" and c["status"] == "True" and c["lastHeartbeatTime"] >= os.environ["T0"]
         for c in n["status"]["conditions"])
ok = ok and not [t for t in n["spec"].get("taints", []) if t["effect"] in ("NoSchedule", "NoExecute")]
sys.exit(0 if ok else 1)'
}
wait_for "node $NODE Ready" 120 node_ready
wait_for "serviceaccount default/default" 60 api /api/v1/namespaces/default/serviceaccounts/default
log "cluster up: export KUBECONFIG=$D/admin.kubeconfig"
