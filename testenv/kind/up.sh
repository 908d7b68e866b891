#!/usr/bin/env bash
# Brings up the kind end-to-end: a local registry, the two images built and pushed to it, a kind
# cluster whose nodes pull from it, Istio (pinned; minimal + ingress gateway, with the `reason`
# stat tag), a server-side dry run of every overlay in istio/overlays (the API server and Istio's
# validating webhook judge them), and the pod-side overlay with a test pod (sshd + wsgate-sidecar)
# and a throwaway TLS certificate. Waits, with deadlines, until the gateway runs the module built
# by this run. Idempotent: run it again on an existing cluster to roll out new builds. Logs land
# in $WORK/logs on failure.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need docker kind istioctl kubectl curl openssl ssh-keygen make

trap 'on_exit up' EXIT

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
# The module in the image just pushed (images/filter.Dockerfile copies this file as
# /plugin.wasm): step 8 waits until the gateway runs exactly these bytes.
module_sha="$(sha256_hex <"$ROOT/target/wsgate-filter.wasm")"
log "filter module sha256 $module_sha"

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

# 6. Every overlay the project ships, judged by the API server (schemas, CRDs included) and by
# Istio's validating webhook, as a server-side dry run: nothing of them is persisted. First what
# they need: the Gateway API CRDs for the gateway-api overlay (vendored, v1.3.0 standard channel:
# the version Istio 1.27 supports; Established before anything uses their kinds), and the
# namespaces they write to. A server-side dry run of a namespaced object fails when its namespace
# does not exist, even if the same overlay holds the Namespace (a dry-run Namespace is not
# created): so `wsgate-system`, which the sidecar-central overlays create, is created here too
# (idempotently, empty). `skypilot` is SkyPilot's, which no overlay creates: the pod-side overlay
# applied in step 7 writes to it as well.
log "installing the Gateway API CRDs (v1.3.0, standard channel)"
# One -f per file: kubectl reads the words after the first file as resource names, not files.
crd_files=()
for f in "$ROOT"/testenv/crds/gateway-api-v1.3.0-*.yaml; do
  crd_files+=(-f "$f")
done
kube apply "${crd_files[@]}"
kube wait --for=condition=Established --timeout=60s "${crd_files[@]}"
for ns in skypilot wsgate-system; do
  kube create namespace "$ns" --dry-run=client -o yaml | kube apply -f -
done
log "server-side dry run of every overlay in istio/overlays"
dry_run_overlays "$ROOT/istio/overlays"

# 7. The gateway's certificate (render.sh renews it before it expires; applied on every run, and
# the gateway reads it through SDS), then the manifests under test with the e2e images.
kube -n istio-system create secret tls wsgate-tls --cert="$WORK/tls.crt" --key="$WORK/tls.key" \
  --dry-run=client -o yaml | kube apply -f -
log "applying the pod-side overlay with the e2e images"
kube apply -k "$WORK/overlay"

# 8. Ready means: the test pod is up, the gateway rolled out, and every gateway pod runs the
# module built by THIS run and has started it (gateway_runs_filter in lib.sh). On a re-run the
# previous module's counters are already there and the image keeps its tag, so neither is proof:
# the module is identified by its sha256. What makes istio-agent fetch again: render.sh puts a
# per-run annotation on the WasmPlugin (a new resourceVersion, which istiod passes to the agent)
# with `imagePullPolicy: Always`; istio-agent's cache (pkg/wasm/cache.go, cacheKey.resourceVersion)
# pulls again under Always only when that resource version changed. While a fetch fails,
# FAIL_RELOAD answers every request the plugin covers with `403 RBAC: access denied`.
kube -n skypilot rollout status deploy/mycluster-head --timeout=240s
kube -n istio-system rollout status deploy/istio-ingressgateway --timeout=240s
wait_for 240 "the ingress gateway to run the wsgate module built by this run (sha256 $module_sha, from oci://${REGISTRY_IN_NETWORK}/wsgate-filter:${TAG}) and define its wsgate_* counters" \
  gateway_runs_filter "$module_sha"
log "up"
