#!/usr/bin/env bash
# Generates every file the kind end-to-end feeds to kind, containerd, istioctl and kubectl, into
# a work directory (the argument, else WSGATE_KIND_WORK, else .testbed/kind). Needs no Docker, kind
# or cluster, only openssl and ssh-keygen, so `make test` checks its output
# (testenv/e2e/test_kind_scripts.py); up.sh runs it before creating anything.
#
#   kind.yaml                    cluster config: containerd reads registry hosts from certs.d
#   hosts.toml                   each node's /etc/containerd/certs.d/localhost:PORT/hosts.toml
#   local-registry-hosting.yaml  the registry, documented for tools (kube-public ConfigMap)
#   istio-e2e.yaml               IstioOperator overlay: the plain-HTTP registry for istio-agent
#   overlay/                     kustomize overlay of istio/overlays/pod-side with the e2e images
#   tls.crt, tls.key             throwaway certificate for the gateway (kept across runs, made
#                                anew when it expires within the hour)
#   id_ed25519, id_ed25519.pub   the test user's ssh key (kept across runs)
#
# WSGATE_E2E_RUN_ID (up.sh sets a fresh one per run) goes into annotations of the WasmPlugin and of
# the test pod, so that re-running on an existing cluster rolls the pod and makes istio-agent
# fetch the module again: both images keep the tag `e2e`, which alone would leave the previous
# build running. For the module, the annotation gives the WasmPlugin a new resourceVersion, which
# istiod hands to istio-agent with the plugin; with `imagePullPolicy: Always` istio-agent pulls
# again exactly when that version changed (istio pkg/wasm/cache.go: cacheKey.resourceVersion,
# getEntry), where IfNotPresent would keep serving the module cached under the tag. up.sh then
# waits until the gateway runs the new module's bytes (gateway_runs_filter in lib.sh).
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [ $# -gt 0 ]; then
  WORK="$1"
fi
need openssl ssh-keygen
RUN_ID="${WSGATE_E2E_RUN_ID:-rendered}"

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"

# Kind's local-registry recipe (kind v0.27+, containerd 2.x): containerd looks registry hosts up
# in /etc/containerd/certs.d/<host>/hosts.toml. The older `registry.mirrors` patch is deprecated
# in containerd 1.x and no longer read by containerd 2. Node images from kind v0.27 already set
# this config_path; the patch keeps older node images working the same way.
cat >"$WORK/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
YAML

# localhost:PORT means the registry on the host for docker push, but inside a node it is the
# node itself: containerd is told that localhost:PORT is served by the registry container, over
# plain HTTP, on the kind network.
cat >"$WORK/hosts.toml" <<TOML
[host."http://${REGISTRY_IN_NETWORK}"]
TOML

# KEP-1755 ("communicating a local registry"): where tools push (host) and how the cluster's
# container runtime and its pods reach the same registry.
cat >"$WORK/local-registry-hosting.yaml" <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
    hostFromContainerRuntime: "localhost:${REGISTRY_PORT}"
    hostFromClusterNetwork: "${REGISTRY_IN_NETWORK}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

# istio-agent, inside the gateway pod, fetches the WasmPlugin's OCI image itself (not containerd),
# from the registry's in-network name, and that registry speaks plain HTTP. pilot-agent reads
# WASM_INSECURE_REGISTRIES, a comma-separated list of hosts matched against the URL's host:port
# (`*` for all): pilot/cmd/pilot-agent/options (env.Register "WASM_INSECURE_REGISTRIES"), passed as
# wasm.Options.InsecureRegistries and checked per fetch by LocalFileCache.allowInsecure(u.Host) in
# pkg/wasm/cache.go; Istio's own Wasm integration tests set it for their test registry.
# It is set through the ingress gateway chart's `env` map (values_types.proto IngressGatewayConfig
# .env, "Environment variables passed to the proxy container"; rendered by the chart's
# deployment.yaml), not components.ingressGateways[].k8s.env: istioctl merges -f files map by map
# but replaces lists whole (operator/pkg/values Map.MergeFrom), so a list here would drop whatever
# istio/istio-operator.yaml says about the gateway. E2E only: the production operator file stays
# free of insecure registries.
cat >"$WORK/istio-e2e.yaml" <<YAML
# Second -f to istioctl after istio/istio-operator.yaml (testenv/kind/up.sh).
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  values:
    gateways:
      istio-ingressgateway:
        env:
          WASM_INSECURE_REGISTRIES: "${REGISTRY_IN_NETWORK}"
YAML

# Kept across runs (e2e.sh trusts it as the CA file), but made anew when missing, unreadable, or
# expiring within the hour (a run's length): a 2-day certificate kept forever would have the
# gateway serve an expired one. up.sh re-creates the gateway's secret from it on every run.
if [ ! -f "$WORK/tls.key" ] || [ ! -f "$WORK/tls.crt" ] ||
  ! openssl x509 -checkend 3600 -noout -in "$WORK/tls.crt" >/dev/null 2>&1; then
  if [ -f "$WORK/tls.crt" ]; then
    log "renewing $WORK/tls.crt (expired, expiring within the hour, or unreadable)"
  fi
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
fi
if [ ! -f "$WORK/id_ed25519" ] || [ ! -f "$WORK/id_ed25519.pub" ]; then
  rm -f "$WORK/id_ed25519" "$WORK/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N "" -C wsgate-kind-e2e -f "$WORK/id_ed25519"
fi

token_hash="$(printf %s "$E2E_TOKEN" | openssl dgst -sha256 -r)"
token_hash="${token_hash%% *}"
pubkey="$(cat "$WORK/id_ed25519.pub")"

rm -rf "$WORK/overlay"
mkdir -p "$WORK/overlay"
base="$(relpath "$WORK/overlay" "$ROOT/istio/overlays/pod-side")"

cat >"$WORK/overlay/kustomization.yaml" <<YAML
# Generated by testenv/kind/render.sh: the pod-side overlay with the e2e images and test secrets.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ${base}
images:
  # Pulled by the node's containerd: localhost:${REGISTRY_PORT} is mapped to the registry by hosts.toml.
  - name: ghcr.io/wsgate/wsgate-sidecar
    newName: localhost:${REGISTRY_PORT}/wsgate-sidecar
    newTag: ${TAG}
patches:
  - path: wasmplugin.yaml
  - path: tokens.yaml
  - path: mycluster-head.yaml
YAML

# Pulled by istio-agent inside the gateway pod, where localhost is the pod itself: the registry's
# name on the kind network (pods resolve it through CoreDNS and the node's resolver).
cat >"$WORK/overlay/wasmplugin.yaml" <<YAML
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: wsgate
  namespace: istio-system
  annotations:
    wsgate.e2e/run: "${RUN_ID}"
spec:
  url: oci://${REGISTRY_IN_NETWORK}/wsgate-filter:${TAG}
  imagePullPolicy: Always
YAML

cat >"$WORK/overlay/tokens.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: mycluster-wsgate-tokens
  namespace: skypilot
stringData:
  tokens: "sha256:${token_hash} e2e admins"
YAML

cat >"$WORK/overlay/mycluster-head.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mycluster-head
  namespace: skypilot
spec:
  template:
    metadata:
      annotations:
        wsgate.e2e/run: "${RUN_ID}"
    spec:
      containers:
        - name: sshd
          env:
            - name: PUBLIC_KEY
              value: "${pubkey}"
            - name: USER_NAME
              value: e2e
        - name: wsgate-sidecar
          imagePullPolicy: Always
YAML

log "rendered into $WORK"
