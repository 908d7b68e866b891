#!/usr/bin/env bash
# Shared settings for the kind + istioctl end-to-end (sourced by the other scripts).
# Needs Docker, kind, istioctl and kubectl on PATH: users' CI, not this repository's machines.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${WSGATE_KIND_CLUSTER:-wsgate-e2e}"
ISTIO_VERSION="${ISTIO_VERSION:-1.27.3}"   # pinned; the workflow installs this istioctl
REGISTRY_NAME="wsgate-registry"
REGISTRY_PORT="${WSGATE_REGISTRY_PORT:-5001}"
TAG="e2e"
WORK="${WSGATE_KIND_WORK:-$ROOT/.testbed/kind}"

log() { printf 'kind-e2e: %s\n' "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing $tool (see testenv/kind/README in the main README)"; exit 2; }
  done
}

# Gateway logs and state, for a failed run.
collect_logs() {
  mkdir -p "$WORK/logs"
  kubectl -n istio-system logs deploy/istio-ingressgateway --tail=2000 >"$WORK/logs/gateway.log" 2>&1 || true
  kubectl -n skypilot logs deploy/mycluster-head --all-containers --tail=2000 >"$WORK/logs/mycluster.log" 2>&1 || true
  kubectl get pods -A -o wide >"$WORK/logs/pods.txt" 2>&1 || true
  log "logs collected in $WORK/logs"
}
