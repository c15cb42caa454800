#!/usr/bin/env bash
# A one-node Kubernetes cluster for the kubernetes compute driver's tests, built and run
# here from source (no registry, no downloaded binaries, no systemd):
#   scripts/setup-kubernetes.sh [start]  install the Debian packages, build the binaries
#                                        (cached by version), start the cluster, print env
#   scripts/setup-kubernetes.sh build    only install packages and build the binaries
#   scripts/setup-kubernetes.sh env      print KUBECONFIG=... and OPENSHELL_KUBE_NODE=ready|absent
#   scripts/setup-kubernetes.sh status   exit 0 when the apiserver answers and the node is Ready
#   scripts/setup-kubernetes.sh stop     stop what this script started (by pid file), remove
#                                        the pods' mounts, network namespaces, bridge and the
#                                        iptables chains the node made
# Idempotent: cached binaries are reused, components already running are left alone.
#
# What runs (every process's pid file and log are under $STATE_DIR/run):
#   etcd, kube-apiserver (RBAC, a CA and service-account keys made here), kube-controller-
#   manager, kube-scheduler, containerd 2 with its own root/state/socket (Docker's own
#   containerd is untouched), kubelet (cgroupfs driver; this host has cgroups v1, which
#   kubelet only accepts with failCgroupV1: false), kube-proxy (iptables), a CNI bridge,
#   the agent-sandbox CRD and its controller, and a pause image built here.
# Binaries: tools/kube (its own Go module) pins Kubernetes, etcd and agent-sandbox; they
# build into $OPENSHELL_CACHE/kubernetes/$K8S_VERSION/bin (~15 min cold on two cores).
# Debian 12's containerd 1.6 is too old for this kubelet, so containerd 2 is built from the
# Go module proxy into $OPENSHELL_CACHE/kubernetes/containerd-$CONTAINERD_VERSION/bin.
set -euo pipefail

K8S_VERSION="v1.36.3"
CONTAINERD_VERSION="${OPENSHELL_CONTAINERD_VERSION:-v2.2.9}"
AGENT_SANDBOX_VERSION="v0.5.6"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${OPENSHELL_CACHE:-$HOME/.cache/openshell}/kubernetes"
BIN="$CACHE_ROOT/$K8S_VERSION/bin"
CTRD_BIN="$CACHE_ROOT/containerd-$CONTAINERD_VERSION/bin"
STATE_DIR="${OPENSHELL_KUBE_STATE_DIR:-/var/lib/openshell/kube}"
RUN_DIR="/run/openshell/kube"
PKI="$STATE_DIR/pki"
PIDS="$STATE_DIR/run"
TIMEOUT="${OPENSHELL_KUBE_TIMEOUT:-120}"
NODE_NAME="openshell-node"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"
BRIDGE="oskube0"
API_PORT=6443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
PAUSE_IMAGE="openshell.local/pause:1"
CTRD_SOCK="$RUN_DIR/containerd/containerd.sock"
ADMIN_KUBECONFIG="$STATE_DIR/admin.kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet agent-sandbox-controller)

log() { echo "setup-kubernetes: $*" >&2; }
die() { log "$*"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install_packages() {
	# runc for containerd's shim; the CNI plugins (bridge, host-local, portmap, loopback);
	# conntrack and iptables for kube-proxy; openssl for the cluster's PKI; curl to talk
	# to the apiserver; mount/ip/nsenter from util-linux and iproute2.
	apt_install runc containernetworking-plugins conntrack iptables openssl curl iproute2 \
		util-linux ethtool socat kmod
}

build_kubernetes() {
	local want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy agent-sandbox-controller pause)
	local b missing=0
	for b in "${want[@]}"; do [[ -x "$BIN/$b" ]] || missing=1; done
	if ((missing == 0)); then
		log "Kubernetes $K8S_VERSION binaries cached in $BIN"
		return 0
	fi
	log "building Kubernetes $K8S_VERSION, etcd and agent-sandbox $AGENT_SANDBOX_VERSION from the Go module proxy (about 15 min on two cores, once per version)"
	rm -rf "$BIN.tmp"
	mkdir -p "$BIN.tmp"
	local start=$SECONDS
	(cd "$ROOT/tools/kube" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -p 2 -trimpath -ldflags='-s -w' -o "$BIN.tmp/" \
		go.etcd.io/etcd/server/v3 \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-proxy \
		sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller \
		./pause)
	# etcd's main package is the module root (go.etcd.io/etcd/server/v3): go build names it "server".
	[[ -x "$BIN.tmp/server" ]] && mv "$BIN.tmp/server" "$BIN.tmp/etcd"
	rm -rf "$BIN"
	mv "$BIN.tmp" "$BIN"
	log "built $(ls "$BIN" | tr '\n' ' ')in $((SECONDS - start))s"
}

build_containerd() {
	if [[ -x "$CTRD_BIN/containerd" && -x "$CTRD_BIN/ctr" && -x "$CTRD_BIN/containerd-shim-runc-v2" ]]; then
		log "containerd $CONTAINERD_VERSION cached in $CTRD_BIN"
		return 0
	fi
	log "building containerd $CONTAINERD_VERSION from the Go module proxy (about 3 min)"
	local dir
	dir="$(GOFLAGS=-mod=mod go mod download -json "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$dir" ]] || die "go mod download gave no module dir for containerd $CONTAINERD_VERSION"
	rm -rf "$CTRD_BIN.tmp"
	mkdir -p "$CTRD_BIN.tmp"
	# no_btrfs: the btrfs snapshotter needs C headers and is not used here.
	(cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -p 2 -trimpath -tags "no_btrfs" \
		-ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
		-o "$CTRD_BIN.tmp/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2)
	rm -rf "$CTRD_BIN"
	mv "$CTRD_BIN.tmp" "$CTRD_BIN"
	log "built $("$CTRD_BIN/containerd" --version)"
}

node_ip() {
	local ip
	ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1)"
	[[ -n "$ip" ]] || ip="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)"
	[[ -n "$ip" ]] || die "no IPv4 address for the node: give the host a global IPv4 address"
	echo "$ip"
}

# cert NAME CN ORG [SAN...]: a client/server certificate signed by the cluster CA.
cert() {
	local name="$1" cn="$2" org="$3"
	shift 3
	[[ -f "$PKI/$name.crt" ]] && return 0
	local san="" ext="$PKI/$name.ext"
	if (($# > 0)); then
		san="subjectAltName=$(IFS=,; echo "$*")"
	fi
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=serverAuth,clientAuth"
		[[ -n "$san" ]] && echo "$san"
	} >"$ext"
	local subj="/CN=$cn"
	[[ -n "$org" ]] && subj="/O=$org/CN=$cn"
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr" "$ext"
	chmod 0600 "$PKI/$name.key"
}

# kubeconfig NAME CERT: a kubeconfig for the apiserver on localhost with that client cert.
kubeconfig() {
	local file="$STATE_DIR/$1.kubeconfig" crt="$2"
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: openshell
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $crt
  user:
    client-certificate: $PKI/$crt.crt
    client-key: $PKI/$crt.key
contexts:
- name: openshell
  context:
    cluster: openshell
    user: $crt
current-context: openshell
EOF
	chmod 0600 "$file"
}

make_pki() {
	mkdir -p "$PKI"
	chmod 0700 "$PKI"
	if [[ ! -f "$PKI/ca.crt" ]]; then
		log "making the cluster CA and certificates in $PKI"
		openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
		openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=openshell-test-cluster-ca" -days 3650 \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
			-out "$PKI/ca.crt" 2>/dev/null
		chmod 0600 "$PKI/ca.key"
	fi
	[[ -f "$PKI/sa.key" ]] || {
		openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
		openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
		chmod 0600 "$PKI/sa.key"
	}
	local ip
	ip="$(node_ip)"
	# The apiserver's serving certificate names every address a client uses: localhost
	# on the host, the node address, and the kubernetes Service from inside pods. A
	# certificate made for another node address is made again.
	if [[ -f "$PKI/apiserver.crt" ]] && ! openssl x509 -in "$PKI/apiserver.crt" -noout -text | grep -q "IP Address:$ip\b"; then
		rm -f "$PKI/apiserver.crt"
	fi
	cert apiserver kube-apiserver "" "IP:127.0.0.1" "IP:$ip" "IP:$SERVICE_IP" "DNS:localhost" \
		"DNS:kubernetes" "DNS:kubernetes.default" "DNS:kubernetes.default.svc" "DNS:kubernetes.default.svc.cluster.local"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
	cert admin openshell-admin system:masters
	cert controller-manager system:kube-controller-manager ""
	cert scheduler system:kube-scheduler ""
	cert kube-proxy system:kube-proxy ""
	cert kubelet "system:node:$NODE_NAME" system:nodes
	cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$ip" "IP:127.0.0.1" "DNS:$NODE_NAME"
	kubeconfig admin admin
	kubeconfig controller-manager controller-manager
	kubeconfig scheduler scheduler
	kubeconfig kube-proxy kube-proxy
	kubeconfig kubelet kubelet
}

write_configs() {
	local ip
	ip="$(node_ip)"
	mkdir -p "$STATE_DIR/cni/net.d" "$STATE_DIR/containerd" "$RUN_DIR/containerd" "$STATE_DIR/kubelet"
	cat >"$STATE_DIR/containerd.toml" <<EOF
version = 3
root = "$STATE_DIR/containerd"
state = "$RUN_DIR/containerd"

[grpc]
  address = "$CTRD_SOCK"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$STATE_DIR/containerd-opt"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.runtime']
    # This host withholds CAP_SYS_RESOURCE even from root, so no process may lower its
    # oom_score_adj; kubelet asks -998 for every pod sandbox, which runc then fails
    # ("failed to update /proc/self/oom_score_adj: Permission denied"). Clamp to ours.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$STATE_DIR/cni/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
	cat >"$STATE_DIR/cni/net.d/10-openshell.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "openshell-kube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE_DIR/cni/networks",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	cat >"$STATE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has cgroups v1 (hybrid) and no systemd: kubelet refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
podCIDR: $POD_CIDR
resolvConf: /etc/resolv.conf
serializeImagePulls: false
protectKernelDefaults: false
# A test node on a shared disk: evict only when it is really full.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2%"
  nodefs.inodesFree: "2%"
  imagefs.available: "2%"
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
	cat >"$STATE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts on the node's primary address only, not on Docker's or Podman's bridges.
nodePortAddresses: ["primary"]
clientConnection:
  kubeconfig: $STATE_DIR/kube-proxy.kubeconfig
conntrack:
  # Leave the host's conntrack table size alone (it is not ours to change).
  maxPerCore: 0
EOF
}

# start NAME CMD...: run a component in a session of its own (it outlives this shell),
# its pid in $PIDS/NAME.pid and its output in $PIDS/NAME.log. A component whose pid
# file names a live process is left alone.
start() {
	local name="$1"
	shift
	local pidf="$PIDS/$name.pid" logf="$PIDS/$name.log"
	if [[ -f "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
		return 0
	fi
	log "starting $name (log: $logf)"
	(cd / && exec setsid nohup "$@" >"$logf" 2>&1 </dev/null) &
	echo $! >"$pidf"
}

alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# wait_for NAME DESCRIPTION CHECK...: poll CHECK until it succeeds; fail with the
# component's last log lines when it exits or the time is up.
wait_for() {
	local name="$1" what="$2"
	shift 2
	local i
	for ((i = 0; i < TIMEOUT * 5; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		if ! alive "$name"; then
			log "$name exited before $what; last lines of $PIDS/$name.log:"
			tail -n 30 "$PIDS/$name.log" >&2 || true
			exit 1
		fi
		sleep 0.2
	done
	log "$name: no $what within ${TIMEOUT}s; last lines of $PIDS/$name.log:"
	tail -n 30 "$PIDS/$name.log" >&2 || true
	exit 1
}

api() {
	curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}
api_ready() { [[ "$(api "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" == ok ]]; }
node_ready() {
	api "https://127.0.0.1:$API_PORT/api/v1/nodes/$NODE_NAME" 2>/dev/null |
		tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

start_control_plane() {
	mkdir -p "$PIDS" "$STATE_DIR/etcd"
	chmod 0700 "$STATE_DIR/etcd"
	start etcd "$BIN/etcd" --name default --data-dir "$STATE_DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn \
		--unsafe-no-fsync
	wait_for etcd "health answer" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
	local ip
	ip="$(node_ip)"
	start kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--secure-port "$API_PORT" --advertise-address "$ip" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--client-ca-file "$PKI/ca.crt" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "$PKI/ca.crt" \
		--kubelet-preferred-address-types InternalIP \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged=true --profiling=false --v=1
	wait_for kube-apiserver "ready answer" api_ready
	start kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
		--authorization-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR" \
		--leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1
	start kube-scheduler "$BIN/kube-scheduler" \
		--kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
		--authentication-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
		--authorization-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
		--leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1
	install_crds
	start agent-sandbox-controller env KUBECONFIG="$ADMIN_KUBECONFIG" "$BIN/agent-sandbox-controller" \
		--enable-webhook=false --leader-elect=false \
		--metrics-bind-address=0 --health-probe-bind-address=0
	sleep 0.5
	alive kube-controller-manager || { tail -n 30 "$PIDS/kube-controller-manager.log" >&2; die "kube-controller-manager exited"; }
	alive kube-scheduler || { tail -n 30 "$PIDS/kube-scheduler.log" >&2; die "kube-scheduler exited"; }
	alive agent-sandbox-controller || { tail -n 30 "$PIDS/agent-sandbox-controller.log" >&2; die "agent-sandbox-controller exited"; }
}

# install_crds applies the agent-sandbox Sandbox CRD from the module cache. Its shipped
# form converts between versions through a webhook Service that a test cluster does not
# run; here conversion is None (v1alpha1 and v1beta1 share one schema shape) and objects
# are stored as v1beta1, as shipped: with v1alpha1 as the storage version the apiserver
# prunes v1beta1's spec.operatingMode on write, so no Sandbox could ever be suspended.
# Objects written as v1alpha1 are still read (the driver's upgrade test covers that).
install_crds() {
	local dir crd
	dir="$(cd "$ROOT/tools/kube" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/agent-sandbox@$AGENT_SANDBOX_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$dir/k8s/crds" ]] || die "no agent-sandbox $AGENT_SANDBOX_VERSION CRDs in the module cache"
	crd="$STATE_DIR/sandboxes.crd.yaml"
	awk '
		/^  conversion:/ { print "  conversion:"; print "    strategy: None"; skip = 1; next }
		skip && /^  [^ ]/ { skip = 0 }
		skip && /^[^ ]/ { skip = 0 }
		skip { next }
		{ print }
	' "$dir/k8s/crds/agents.x-k8s.io_sandboxes.yaml" >"$crd"
	api -X PATCH -H 'Content-Type: application/apply-patch+yaml' --data-binary "@$crd" \
		"https://127.0.0.1:$API_PORT/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sandboxes.agents.x-k8s.io?fieldManager=openshell-setup&force=true" >/dev/null
	local i
	for ((i = 0; i < TIMEOUT * 5; i++)); do
		api "https://127.0.0.1:$API_PORT/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sandboxes.agents.x-k8s.io" |
			tr -d ' \n' | grep -q '"type":"Established","status":"True"' && return 0
		sleep 0.2
	done
	die "the Sandbox CRD was not established within ${TIMEOUT}s"
}

# import_pause builds the pause image (an OCI layout around the static pause binary) and
# imports it into the node's containerd, where it is the sandbox image of every pod.
import_pause() {
	if "$CTRD_BIN/ctr" --address "$CTRD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qx "$PAUSE_IMAGE"; then
		return 0
	fi
	log "importing the pause image $PAUSE_IMAGE"
	local tmp
	tmp="$(mktemp -d)"
	mkdir -p "$tmp/root" "$tmp/oci/blobs/sha256"
	cp "$BIN/pause" "$tmp/root/pause"
	tar -C "$tmp/root" --numeric-owner --owner=0 --group=0 -cf "$tmp/layer.tar" pause
	local layer lsize config csize manifest msize
	layer="$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
	lsize="$(stat -c %s "$tmp/layer.tar")"
	mv "$tmp/layer.tar" "$tmp/oci/blobs/sha256/$layer"
	printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
		"$layer" >"$tmp/config.json"
	config="$(sha256sum "$tmp/config.json" | cut -d' ' -f1)"
	csize="$(stat -c %s "$tmp/config.json")"
	mv "$tmp/config.json" "$tmp/oci/blobs/sha256/$config"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
		"$config" "$csize" "$layer" "$lsize" >"$tmp/manifest.json"
	manifest="$(sha256sum "$tmp/manifest.json" | cut -d' ' -f1)"
	msize="$(stat -c %s "$tmp/manifest.json")"
	mv "$tmp/manifest.json" "$tmp/oci/blobs/sha256/$manifest"
	printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"1"}}]}' \
		"$manifest" "$msize" "$PAUSE_IMAGE" >"$tmp/oci/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci/oci-layout"
	tar -C "$tmp/oci" -cf "$tmp/pause.tar" .
	"$CTRD_BIN/ctr" --address "$CTRD_SOCK" -n k8s.io images import "$tmp/pause.tar" >/dev/null
	rm -rf "$tmp"
}

host_prepare() {
	# Pods reach Services through kube-proxy's iptables rules on the bridge.
	modprobe br_netfilter 2>/dev/null || true
	modprobe overlay 2>/dev/null || true
	[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	echo 1 >/proc/sys/net/ipv4/ip_forward
	mkdir -p /var/log/pods /var/log/containers
	shared_netns_dir
}

start_node() {
	host_prepare
	start containerd env PATH="$CTRD_BIN:$PATH" "$CTRD_BIN/containerd" --config "$STATE_DIR/containerd.toml"
	wait_for containerd "socket" "$CTRD_BIN/ctr" --address "$CTRD_SOCK" version
	import_pause
	start kubelet "$BIN/kubelet" --config "$STATE_DIR/kubelet.yaml" \
		--kubeconfig "$STATE_DIR/kubelet.kubeconfig" --root-dir "$STATE_DIR/kubelet" \
		--hostname-override "$NODE_NAME" --node-ip "$(node_ip)" --v=1
	start kube-proxy "$BIN/kube-proxy" --config "$STATE_DIR/kube-proxy.yaml" --hostname-override "$NODE_NAME" --v=1
	wait_for kubelet "Ready node" node_ready
	alive kube-proxy || { tail -n 30 "$PIDS/kube-proxy.log" >&2; die "kube-proxy exited"; }
}

print_env() {
	echo "KUBECONFIG=$ADMIN_KUBECONFIG"
	if [[ -f "$PKI/admin.crt" ]] && node_ready; then
		echo "OPENSHELL_KUBE_NODE=ready"
	else
		echo "OPENSHELL_KUBE_NODE=absent"
	fi
	echo "OPENSHELL_KUBE_CONTAINERD_SOCK=$CTRD_SOCK"
	echo "OPENSHELL_KUBE_CTR=$CTRD_BIN/ctr"
}

stop_one() {
	local name="$1" pidf="$PIDS/$1.pid"
	[[ -f "$pidf" ]] || return 0
	local pid i
	pid="$(cat "$pidf")"
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidf"
}

# stop_pods removes every pod sandbox from the node's containerd (CRI through ctr's
# tasks: kill each task, then delete containers), so no shim, mount or netns remains.
stop_pods() {
	[[ -S "$CTRD_SOCK" ]] || return 0
	local ctr=("$CTRD_BIN/ctr" --address "$CTRD_SOCK" -n k8s.io) id
	for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	sleep 0.5
	for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
	done
	for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
		"${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
	done
}

cleanup_host() {
	# Network namespaces the CRI made, pod volume mounts kubelet made, then the bridge
	# and the iptables chains of kube-proxy and the CNI plugins.
	local m ns
	for m in $(awk '{print $2}' /proc/mounts | grep -E "^($STATE_DIR|$RUN_DIR|/run/netns/cni-)" | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	for ns in $(ls /run/netns 2>/dev/null | grep '^cni-' || true); do
		ip netns delete "$ns" 2>/dev/null || true
	done
	ip link delete "$BRIDGE" 2>/dev/null || true
	local table chain
	for table in filter nat mangle; do
		for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true); do
			iptables -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |$)" | grep -v "^-N" | sed 's/^-A/-D/' |
				while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done || true # none: grep fails
		done
		for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true); do
			iptables -t "$table" -F "$chain" 2>/dev/null || true
		done
		for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true); do
			iptables -t "$table" -X "$chain" 2>/dev/null || true
		done
	done
	rm -rf "$STATE_DIR/cni/networks"
	# containerd's runtime state (sockets, task dirs) lives only as long as it runs.
	awk '{print $2}' /proc/mounts | grep -q "^$RUN_DIR" || rm -rf "$RUN_DIR"
}

stop_all() {
	local c
	for c in agent-sandbox-controller kube-proxy kubelet; do stop_one "$c"; done
	stop_pods
	for c in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_one "$c"; done
	cleanup_host
}

case "${1:-start}" in
build)
	install_packages
	build_kubernetes
	build_containerd
	;;
start)
	t0=$SECONDS
	install_packages
	build_kubernetes
	build_containerd
	make_pki
	write_configs
	start_control_plane
	log "control plane up in $((SECONDS - t0))s"
	start_node
	log "cluster up, node $NODE_NAME Ready, in $((SECONDS - t0))s"
	print_env
	;;
env) print_env ;;
status) [[ -f "$PKI/admin.crt" ]] && api_ready && node_ready ;;
stop) stop_all ;;
*)
	echo "usage: $0 [start|build|env|status|stop]" >&2
	exit 2
	;;
esac
