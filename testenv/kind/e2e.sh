#!/usr/bin/env bash
# Runs the client tests of the local test bed through the real gateway in kind: ssh over wss
# through `wsgate proxy` (token in the subprotocol, rewritten by the filter, routed by cluster),
# the 426 guard for ws://, and routing refusals. Collects the gateway's logs on failure.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need kubectl ssh
trap 'collect_logs' ERR

make -C "$ROOT" client
WSGATE="$ROOT/target/release/wsgate"
kubectl -n istio-system port-forward svc/istio-ingressgateway 18443:443 18080:80 >"$WORK/port-forward.log" 2>&1 &
PF=$!
trap 'kill $PF 2>/dev/null || true' EXIT
sleep 3

export WSGATE_TOKEN="sky_e2e_token_0123456789"
PROXY="$WSGATE proxy https://localhost:18443 %h --ca-file $WORK/tls.crt --token-in-subprotocol"
SSH=(ssh -F /dev/null -p 2222 -i "$WORK/id_ed25519" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no
     -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o "ProxyCommand=$PROXY")

log "ssh over wss through the gateway"
out="$("${SSH[@]}" e2e@mycluster.wsgate echo kind-ok)"
[ "$out" = "kind-ok" ] || { log "unexpected output: $out"; exit 1; }

log "ws:// gets the 426 with the wss:// URL (exit 3)"
set +e
err="$("$WSGATE" proxy http://127.0.0.1:18080 mycluster </dev/null 2>&1)"
code=$?
set -e
if [ "$code" != 3 ] || ! grep -q "426" <<<"$err"; then
  log "want exit 3 and a 426, got $code: $err"
  exit 1
fi

log "an unvalidated cluster name never reaches a backend (exit 2 locally, 400 at the gateway)"
status="$(curl -sk -o /dev/null -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
  -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  'https://localhost:18443/kubernetes-pod-ssh-proxy?cluster_name=10.0.0.1:22')"
[ "$status" = 400 ] || { log "want 400, got $status"; exit 1; }

log "the filter's counters are exported"
kubectl -n istio-system exec deploy/istio-ingressgateway -- pilot-agent request GET stats \
  | grep -q "wsgate_tokens_rewritten_total" || { log "no wsgate counters"; exit 1; }
log "all passed"
