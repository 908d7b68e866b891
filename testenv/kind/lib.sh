#!/usr/bin/env bash
# Shared settings and helpers for the kind + istioctl end-to-end (sourced by the other scripts).
# The cluster needs Docker, kind, istioctl and kubectl; render.sh needs none of them.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${WSGATE_KIND_CLUSTER:-wsgate-e2e}"
# Every kubectl/istioctl call names the kind cluster's context, so that a current context changed
# meanwhile (another terminal, another cluster) is never the one installed to or deleted from.
KCTX="kind-${CLUSTER}"
ISTIO_VERSION="${ISTIO_VERSION:-1.27.3}"   # pinned; the workflow installs this istioctl
KIND_VERSION="${KIND_VERSION:-v0.29.0}"    # pinned; its default node image is Kubernetes v1.33
REGISTRY_NAME="${WSGATE_REGISTRY_NAME:-wsgate-registry}"
REGISTRY_PORT="${WSGATE_REGISTRY_PORT:-5001}"
# The registry as the kind nodes and the pods reach it: its container name on the `kind` Docker
# network and the port it listens on inside its container.
REGISTRY_IN_NETWORK="${REGISTRY_NAME}:5000"
TAG="e2e"
WORK="${WSGATE_KIND_WORK:-$ROOT/.testbed/kind}"
HTTPS_PORT="${WSGATE_KIND_HTTPS_PORT:-18443}"
HTTP_PORT="${WSGATE_KIND_HTTP_PORT:-18080}"
# The test token; the cluster only ever holds its sha256.
E2E_TOKEN="sky_e2e_token_0123456789"

log() { printf 'kind-e2e: %s\n' "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing $tool (see testenv/kind/README.md)"; exit 2; }
  done
}

kube() { kubectl --context "$KCTX" "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 2 s until it succeeds. After SECONDS
# it fails, naming what never came and showing the last attempt's output, so a timed-out run says
# what it was waiting for instead of failing later on a symptom. COMMAND should bound its own
# time (curl --max-time, kubectl --request-timeout): one hung attempt would outlive the deadline.
wait_for() {
  local seconds="$1" what="$2" deadline out
  shift 2
  deadline=$((SECONDS + seconds))
  while :; do
    if out="$("$@" 2>&1)"; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "gave up after ${seconds}s waiting for: $what"
      log "last attempt ($*): ${out:0:2000}"
      return 1
    fi
    sleep 2
  done
}

# relpath FROM_DIR TO_DIR: TO_DIR relative to FROM_DIR (both must exist). kustomize refuses
# absolute paths in `resources`, and the work directory may be anywhere (WSGATE_KIND_WORK), so
# the generated overlay reaches the repository's overlays by a computed relative path. Physical
# paths (pwd -P) on both sides, because the kernel resolves `..` physically.
relpath() {
  local from to common up="" rest out
  from="$(cd "$1" && pwd -P)" || return 1
  to="$(cd "$2" && pwd -P)" || return 1
  common="$from"
  while [ "$common" != "/" ] && [ "$to" != "$common" ] && [ "${to#"$common"/}" = "$to" ]; do
    common="$(dirname "$common")"
    up="../$up"
  done
  if [ "$to" = "$common" ]; then
    rest=""
  elif [ "$common" = "/" ]; then
    rest="${to#/}"
  else
    rest="${to#"$common"/}"
  fi
  out="${up}${rest}"
  out="${out%/}"
  printf '%s\n' "${out:-.}"
}

# Everything a failed run needs to be understood, into $WORK/logs: the ingress gateway (logs,
# the filter's stats, its Envoy config), istiod, the test pod (sshd + sidecar), events, pods,
# the WasmPlugin's status, the registry's catalogue, and the rendered files. Every step is best
# effort and time-bounded: collecting must work on a half-created cluster, or none.
collect_logs() {
  local out="$WORK/logs" k=(kubectl --context "$KCTX" --request-timeout=20s)
  mkdir -p "$out"
  log "collecting logs into $out"
  "${k[@]}" -n istio-system logs -l istio=ingressgateway --all-containers --prefix --tail=-1 \
    >"$out/ingressgateway.log" 2>&1 || true
  "${k[@]}" -n istio-system logs -l istio=ingressgateway --all-containers --prefix --previous \
    >"$out/ingressgateway-previous.log" 2>&1 || true
  "${k[@]}" -n istio-system logs deploy/istiod --all-containers --tail=-1 >"$out/istiod.log" 2>&1 || true
  "${k[@]}" -n istio-system exec deploy/istio-ingressgateway -- pilot-agent request GET stats \
    >"$out/ingressgateway-stats.txt" 2>&1 || true
  "${k[@]}" -n istio-system exec deploy/istio-ingressgateway -- pilot-agent request GET config_dump \
    >"$out/ingressgateway-config_dump.json" 2>&1 || true
  "${k[@]}" -n skypilot logs deploy/mycluster-head --all-containers --prefix --tail=-1 \
    >"$out/mycluster-head.log" 2>&1 || true
  "${k[@]}" -n skypilot describe pods >"$out/skypilot-pods.txt" 2>&1 || true
  "${k[@]}" get events -A --sort-by=.lastTimestamp >"$out/events.txt" 2>&1 || true
  "${k[@]}" get pods -A -o wide >"$out/pods.txt" 2>&1 || true
  "${k[@]}" get wasmplugins.extensions.istio.io -A -o yaml >"$out/wasmplugins.yaml" 2>&1 || true
  "${k[@]}" -n istio-system get deploy/istio-ingressgateway -o yaml >"$out/ingressgateway-deployment.yaml" 2>&1 || true
  curl -sS --max-time 5 "http://localhost:${REGISTRY_PORT}/v2/_catalog" >"$out/registry-catalog.json" 2>&1 || true
  docker ps -a >"$out/docker-ps.txt" 2>&1 || true
  # The rendered inputs, without the private keys.
  local f
  for f in kind.yaml hosts.toml istio-e2e.yaml local-registry-hosting.yaml port-forward.log; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$out/" || true; fi
  done
  if [ -d "$WORK/overlay" ]; then cp -r "$WORK/overlay" "$out/" || true; fi
  log "logs collected in $out"
}
