#!/usr/bin/env bash
# Creates a kind cluster with a local registry, installs Istio (pinned, minimal + ingress
# gateway, with the `reason` stat tag), builds and pushes the images, and applies the
# pod-side overlay with a test pod (sshd + wsgate-sidecar) and a throwaway TLS certificate.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need docker kind istioctl kubectl openssl ssh-keygen

mkdir -p "$WORK"
if [ -z "$(docker ps -q -f "name=^${REGISTRY_NAME}$")" ]; then
  log "starting the local registry on localhost:$REGISTRY_PORT"
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --name "$REGISTRY_NAME" registry:2 >/dev/null
fi
if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  cat >"$WORK/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."localhost:${REGISTRY_PORT}"]
      endpoint = ["http://${REGISTRY_NAME}:5000"]
YAML
  kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 120s
  docker network connect kind "$REGISTRY_NAME" 2>/dev/null || true
fi

log "installing Istio $ISTIO_VERSION"
istioctl version --remote=false | grep -q "$ISTIO_VERSION" || log "warning: istioctl is not $ISTIO_VERSION"
istioctl install -y -f "$ROOT/istio/istio-operator.yaml"

log "building and pushing the images"
make -C "$ROOT" filter
docker build -f "$ROOT/images/filter.Dockerfile" -t "localhost:${REGISTRY_PORT}/wsgate-filter:${TAG}" "$ROOT"
docker build -f "$ROOT/images/sidecar.Dockerfile" -t "localhost:${REGISTRY_PORT}/wsgate-sidecar:${TAG}" "$ROOT"
docker push "localhost:${REGISTRY_PORT}/wsgate-filter:${TAG}"
docker push "localhost:${REGISTRY_PORT}/wsgate-sidecar:${TAG}"

log "TLS certificate and the test key"
if [ ! -f "$WORK/tls.key" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
  ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519"
fi
kubectl -n istio-system create secret tls wsgate-tls --cert="$WORK/tls.crt" --key="$WORK/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f -

log "applying the pod-side overlay with the e2e images"
rm -rf "$WORK/overlay" && mkdir -p "$WORK/overlay"
TOKEN_HASH="$(printf %s "sky_e2e_token_0123456789" | sha256sum | cut -d' ' -f1)"
PUBKEY="$(cat "$WORK/id_ed25519.pub")"
cat >"$WORK/overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $ROOT/istio/overlays/pod-side
images:
  - name: ghcr.io/wsgate/wsgate-sidecar
    newName: localhost:${REGISTRY_PORT}/wsgate-sidecar
    newTag: ${TAG}
patchesStrategicMerge:
  - patch.yaml
YAML
cat >"$WORK/overlay/patch.yaml" <<YAML
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: wsgate
  namespace: istio-system
spec:
  url: oci://localhost:${REGISTRY_PORT}/wsgate-filter:${TAG}
---
apiVersion: v1
kind: Secret
metadata:
  name: mycluster-wsgate-tokens
  namespace: skypilot
stringData:
  tokens: "sha256:${TOKEN_HASH} e2e admins"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mycluster-head
  namespace: skypilot
spec:
  template:
    spec:
      containers:
        - name: sshd
          env:
            - name: PUBLIC_KEY
              value: "${PUBKEY}"
            - name: USER_NAME
              value: e2e
YAML
kubectl apply -k "$WORK/overlay"
kubectl -n skypilot rollout status deploy/mycluster-head --timeout=180s
kubectl -n istio-system rollout status deploy/istio-ingressgateway --timeout=180s
log "up"
