#!/usr/bin/env bash
# Brings up the kind end-to-end: a local registry, the two images built and pushed to it, a kind
# cluster whose nodes pull from it, Istio (pinned; minimal + ingress gateway, with the `reason`
# stat tag), and the pod-side overlay with a test pod (sshd + wsgate-sidecar) and a throwaway TLS
# certificate. Waits, with deadlines, until the gateway has loaded the filter. Idempotent: run it
# again on an existing cluster to roll out new builds. Logs land in $WORK/logs on failure.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need docker kind istioctl kubectl curl openssl ssh-keygen make

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "up failed (exit $rc)"
    collect_logs
  fi
  exit "$rc"
}
trap on_exit EXIT

docker info >/dev/null 2>&1 || { log "docker is installed but its engine does not answer"; exit 2; }
versions="$(kind version 2>&1 || true)"
case "$versions" in *"$KIND_VERSION "*) ;; *) log "warning: kind is not $KIND_VERSION ($versions)";; esac
versions="$(istioctl version --remote=false 2>&1 || true)"
case "$versions" in *"$ISTIO_VERSION"*) ;; *) log "warning: istioctl is not $ISTIO_VERSION ($versions)";; esac

mkdir -p "$WORK"

# 1. The registry (kind's recipe: on the default bridge first, joined to `kind` below).
state="$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)"
case "$state" in
  true) ;;
  false) log "starting the stopped registry $REGISTRY_NAME"; docker start "$REGISTRY_NAME" >/dev/null ;;
  *)
    log "creating the registry $REGISTRY_NAME on localhost:$REGISTRY_PORT"
    docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge \
      --name "$REGISTRY_NAME" registry:3 >/dev/null
    ;;
esac
registry_answers() { curl -fsS --max-time 3 "http://localhost:${REGISTRY_PORT}/v2/" >/dev/null; }
wait_for 60 "the registry answering on localhost:$REGISTRY_PORT/v2/" registry_answers

# 2. The images: `make images` builds the filter module and both images (no test bed needed).
log "building the images"
make -C "$ROOT" images IMAGE_REPO="localhost:${REGISTRY_PORT}" IMAGE_TAG="$TAG"
docker push "localhost:${REGISTRY_PORT}/wsgate-filter:${TAG}"
docker push "localhost:${REGISTRY_PORT}/wsgate-sidecar:${TAG}"

# 3. Every generated file (kind config, hosts.toml, Istio overlay, kustomize overlay, keys).
WSGATE_E2E_RUN_ID="$(date +%s)" bash "$ROOT/testenv/kind/render.sh" "$WORK"

# 4. The cluster, and on every run (not only at creation) each node's registry mapping and the
# registry's place on the `kind` network: a cluster or registry re-created separately, or a
# registry restarted, would otherwise be left unreachable.
clusters="$(kind get clusters 2>/dev/null || true)"
if ! grep -Fx "$CLUSTER" >/dev/null <<<"$clusters"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 180s
fi
certs_dir="/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
nodes="$(kind get nodes --name "$CLUSTER")"
for node in $nodes; do
  docker exec "$node" mkdir -p "$certs_dir"
  docker exec -i "$node" cp /dev/stdin "$certs_dir/hosts.toml" <"$WORK/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = null ]; then
  log "connecting $REGISTRY_NAME to the kind network"
  docker network connect kind "$REGISTRY_NAME"
fi
kube apply -f "$WORK/local-registry-hosting.yaml"

# 5. Istio: the production operator file plus the e2e-only overlay (WASM_INSECURE_REGISTRIES).
log "installing Istio $ISTIO_VERSION"
istioctl install --context "$KCTX" -y -f "$ROOT/istio/istio-operator.yaml" -f "$WORK/istio-e2e.yaml"

# 6. The gateway's certificate, then the manifests under test with the e2e images.
kube -n istio-system create secret tls wsgate-tls --cert="$WORK/tls.crt" --key="$WORK/tls.key" \
  --dry-run=client -o yaml | kube apply -f -
log "applying the pod-side overlay with the e2e images"
kube apply -k "$WORK/overlay"

# 7. Ready means: the test pod is up, the gateway rolled out, and the gateway has loaded the
# filter. The filter defines its counters when its configuration loads, so their presence in the
# gateway's Envoy stats shows that istio-agent fetched the module and Envoy started it (until
# then FAIL_CLOSE answers every request with 403/503).
kube -n skypilot rollout status deploy/mycluster-head --timeout=240s
kube -n istio-system rollout status deploy/istio-ingressgateway --timeout=240s
filter_loaded() {
  local stats
  stats="$(kube --request-timeout=15s -n istio-system exec deploy/istio-ingressgateway -- \
    pilot-agent request GET stats)" || return 1
  grep -F "wasmcustom.wsgate_tokens_rewritten_total" >/dev/null <<<"$stats"
}
wait_for 240 "the ingress gateway to load the wsgate filter from oci://${REGISTRY_IN_NETWORK} (its wsgate_* counters in the gateway's stats)" filter_loaded
log "up"
