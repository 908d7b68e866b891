#!/usr/bin/env bash
# Runs the client's checks through the real gateway in kind (after up.sh): ssh over wss through
# `wsgate proxy` (token in the subprotocol, rewritten by the filter, routed by cluster name), the
# 426 guard for ws://, the refusal of an unvalidated cluster name, the filter's counters, and
# last an ssh session that lives through a restart of the ingress gateway (resumed, nothing lost).
# Every wait has a deadline and names what never came; logs land in $WORK/logs on failure.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need kubectl ssh curl make

trap 'on_exit e2e' EXIT

make -C "$ROOT" client
WSGATE="$ROOT/target/release/wsgate"

# The port-forward follows the gateway from pod to pod (gateway_port_forward in lib.sh): the last
# check restarts the gateway under a running session. on_exit ends it, and it ends its kubectl.
gateway_port_forward "$HTTPS_PORT" "$HTTP_PORT" >"$WORK/port-forward.log" 2>&1 &
PF=$!
EXIT_KILL_PIDS="$PF"

port_forward_answers() {
  if ! kill -0 "$PF" 2>/dev/null; then
    echo "the port-forward to the gateway ended: $(tail -n 5 "$WORK/port-forward.log")"
    return 1
  fi
  # Any HTTP answer will do: the filter may not be serving yet.
  curl -sk --max-time 5 -o /dev/null "https://localhost:${HTTPS_PORT}/"
}
wait_for 60 "kubectl port-forward to the ingress gateway answering on localhost:${HTTPS_PORT}" port_forward_answers

# The HTTP status the gateway gives a WebSocket upgrade to the SkyPilot SSH path with QUERY.
upgrade_status() {
  curl -sk --max-time 10 -o /dev/null -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    "https://localhost:${HTTPS_PORT}/kubernetes-pod-ssh-proxy?$1"
}
# Only the filter answers 400 for a cluster name that is an address: without it the route does
# not match at all; while the module cannot be fetched, FAIL_RELOAD answers 403 (`RBAC: access
# denied`), and a request whose VM crashed gets 503 (the next one gets a new VM).
filter_refuses_address() {
  local status
  status="$(upgrade_status 'cluster_name=10.0.0.1:22')" || true
  [ "$status" = 400 ] || { echo "HTTP $status"; return 1; }
}

log "an unvalidated cluster name never reaches a backend (400 at the gateway)"
wait_for 120 "the gateway's wsgate filter answering 400 for cluster_name=10.0.0.1:22" filter_refuses_address

export WSGATE_TOKEN="$E2E_TOKEN"
# Quoted for the shell ssh runs it with (proxy_command in lib.sh): the paths may hold spaces.
PROXY="$(proxy_command "$WSGATE" "$WORK/tls.crt" "$HTTPS_PORT")"
SSH=(ssh -F /dev/null -p 2222 -i "$WORK/id_ed25519" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no
     -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 -o "ProxyCommand=$PROXY")
ssh_echo() {
  local out
  out="$("${SSH[@]}" e2e@mycluster.wsgate echo kind-ok 2>&1)" || { echo "$out"; return 1; }
  [ "$out" = "kind-ok" ] || { echo "unexpected output: $out"; return 1; }
}
# Retried only until the sshd container has started (its image starts sshd after its own init);
# once one session worked, a second must work at once.
log "ssh over wss through the gateway (token in the subprotocol, routed by the filter)"
wait_for 120 "ssh through wsgate proxy, the gateway and the sidecar to the test pod's sshd" ssh_echo
ssh_echo || { log "a second ssh session failed"; exit 1; }

log "ws:// gets the 426 naming the wss:// URL (exit 3)"
set +e
err="$("$WSGATE" proxy "http://127.0.0.1:${HTTP_PORT}" mycluster </dev/null 2>&1)"
code=$?
set -e
case "$code:$err" in
  3:*426*) ;;
  *) log "want exit 3 and a 426, got $code: $err"; exit 1 ;;
esac

log "the filter's counters are exported"
stats="$(kube --request-timeout=30s -n istio-system exec deploy/istio-ingressgateway -- pilot-agent request GET stats)"
rewritten="$(awk -F': ' '$1 ~ /wsgate_tokens_rewritten_total$/ { n += $2 } END { print n + 0 }' <<<"$stats")"
if [ "$rewritten" -lt 1 ]; then
  log "wasmcustom.wsgate_tokens_rewritten_total is $rewritten after an ssh session with a subprotocol token"
  exit 1
fi
# The `reason` label (extraStatTags in istio/istio-operator.yaml, docs/filter-metrics.md): the
# refused address above counts as invalid_cluster in the labelled family.
prom="$(kube --request-timeout=30s -n istio-system exec deploy/istio-ingressgateway -- pilot-agent request GET stats/prometheus)"
refused="$(awk '$1 ~ /^wsgate_route_rejections_total\{/ && $1 ~ /reason="invalid_cluster"/ { n += $NF } END { print n + 0 }' <<<"$prom")"
if [ "$refused" -lt 1 ]; then
  log "wsgate_route_rejections_total{reason=\"invalid_cluster\"} is $refused in /stats/prometheus"
  exit 1
fi
# Last, as it replaces the gateway pod (and with it the counters read above): the headline of
# resumable sessions (docs/resume.md). A 90-number loop outlasts the rollout (a new pod Ready,
# the old one drained for Istio's terminationDrainDuration, 5 s) with room to spare.
log "an ssh session lives through a restart of the ingress gateway (resumed, nothing lost)"
restart_gateway_during_session 90 "${SSH[@]}" e2e@mycluster.wsgate
log "all passed (tokens rewritten: $rewritten, invalid cluster names refused: $refused, gateway restarted under a session)"
