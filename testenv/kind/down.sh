#!/usr/bin/env bash
# Deletes the kind cluster and the local registry (the work directory and its logs stay).
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need docker kind
kind delete cluster --name "$CLUSTER" || true
docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
log "down"
