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

# sha256_hex <FILE: the hex sha256 of stdin. openssl, not sha256sum: render.sh already needs
# it, and macOS has no sha256sum.
sha256_hex() {
  local out
  out="$(openssl dgst -sha256 -r)" || return 1
  printf '%s\n' "${out%% *}"
}

# Background processes (pids, space-separated) that on_exit ends: e2e.sh's port-forward and
# its ssh session running through a gateway restart.
EXIT_KILL_PIDS=""
# How long on_exit lets them end after TERM before it KILLs them: gateway_port_forward may be in
# a kubectl call (at most --request-timeout=5s) and ends its own port-forward once that returns.
EXIT_KILL_GRACE=8

# on_exit WHAT: the EXIT trap of up.sh and e2e.sh (`trap 'on_exit up' EXIT`). Ends the processes
# in EXIT_KILL_PIDS; on a non-zero exit, says WHAT failed and collects the logs into $WORK/logs.
# Exits with the script's own status.
on_exit() {
  local rc=$? pid alive deadline
  for pid in $EXIT_KILL_PIDS; do
    kill "$pid" 2>/dev/null || true
  done
  # Each gets EXIT_KILL_GRACE seconds to end (and end its own children), then whatever is left
  # is KILLed: a TERM that lands while the background job's shell is still starting its command
  # can be lost (seen with bash 5). The shell reaps its ended children between the polls, so
  # `kill -0` fails once one has ended.
  if [ -n "$EXIT_KILL_PIDS" ]; then
    deadline=$((SECONDS + EXIT_KILL_GRACE))
    while :; do
      alive=""
      for pid in $EXIT_KILL_PIDS; do
        if kill -0 "$pid" 2>/dev/null; then alive="$pid"; fi
      done
      if [ -z "$alive" ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
      sleep 0.1
    done
    for pid in $EXIT_KILL_PIDS; do
      kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  if [ "$rc" -ne 0 ]; then
    log "$1 failed (exit $rc)"
    collect_logs
  fi
  exit "$rc"
}

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

# proxy_command WSGATE CA_FILE PORT: the ssh ProxyCommand running `wsgate proxy` against the
# port-forwarded gateway. ssh hands it to the user's shell (`$SHELL -c "exec ..."`), so each path
# is shell-quoted (printf %q: a work directory with a space, or a quote, stays one word), and a
# `%` in them is doubled, since ssh expands %-tokens (%h, the host) in ProxyCommand first.
proxy_command() {
  local wsgate ca
  printf -v wsgate '%q' "$1"
  printf -v ca '%q' "$2"
  printf '%s proxy https://localhost:%s %%h --ca-file %s --token-in-subprotocol\n' \
    "${wsgate//%/%%}" "$3" "${ca//%/%%}"
}

# dry_run_overlays [DIR]: `kubectl apply --dry-run=server -k` of every overlay in DIR (default
# istio/overlays), found by glob: an overlay added there is judged without editing this list.
# The API server checks each object against its schema (CRDs included) and the admission
# webhooks, Istio's validating webhook among them, judge it too; nothing is persisted. The
# overlays' namespaces must exist first: a server-side dry run of a namespaced object in a
# missing namespace fails, even when the same apply would create the Namespace (up.sh creates
# them). `trafficextension` needs TrafficExtension (Istio's master branch, not 1.27): it is
# skipped, saying so, unless the cluster serves that kind. Runs them all, then fails naming
# every overlay refused.
dry_run_overlays() {
  local dir="${1:-$ROOT/istio/overlays}" served overlay name out failed="" n=0
  # kubectl exits non-zero when any API group's discovery fails (an aggregated API down), yet
  # prints the kinds it found: go on with those.
  served="$(kube api-resources --api-group=extensions.istio.io -o name)" ||
    log "warning: API discovery was incomplete; extensions.istio.io kinds found: ${served:-none}"
  for overlay in "$dir"/*/; do
    [ -d "$overlay" ] || continue
    overlay="${overlay%/}"
    name="$(basename "$overlay")"
    if [ "$name" = trafficextension ] && ! grep -E '^trafficextensions(\.|$)' >/dev/null <<<"$served"; then
      log "dry run skipped: $name (this Istio does not serve TrafficExtension)"
      continue
    fi
    n=$((n + 1))
    if out="$(kube apply --dry-run=server -k "$overlay" 2>&1)"; then
      printf '%s\n' "$out"
      log "dry run passed: $name"
    else
      printf '%s\n' "$out" >&2
      log "dry run REFUSED: $name ($overlay)"
      failed="$failed $name"
    fi
  done
  if [ "$n" -eq 0 ]; then
    log "no overlay found in $dir"
    return 1
  fi
  if [ -n "$failed" ]; then
    log "the API server or an admission webhook refused the overlay(s):$failed"
    return 1
  fi
}

# gateway_runs_filter SHA256: every ingress gateway pod runs the Wasm module whose sha256 is
# SHA256 (the one just built), and the filter has started in it. Neither the tag nor the
# counters tell a re-run's module from the previous one, so the module is identified by content:
# - istio-agent fetches the OCI image, writes the module to a local file and hands Envoy an
#   ECDS config naming that file (pkg/wasm/convert.go rewrites vm_config.code to `local.filename`);
#   the gateway's config_dump (EcdsConfigDump) holds the config Envoy accepted, and Envoy
#   rejects a Wasm config whose module does not load, keeping the previous one;
# - the file is /var/lib/istio/data/<sha256 of the URL without tag>/<checksum>.wasm
#   (pkg/wasm/cache.go, getModulePath), where for oci:// the checksum is the image MANIFEST's
#   digest (ImageFetcher.PrepareFetch returns img.Digest()), not the module's: so the file's
#   bytes are hashed here, read through `kubectl exec cat` (the default proxyv2 image is
#   Ubuntu-based; a distroless one has no cat), and compared with SHA256;
# - the filter defines its counters when its configuration loads, so their presence in the
#   gateway's stats shows that Envoy started it (while a fetch fails, FAIL_RELOAD answers every
#   request the plugin covers with `403 RBAC: access denied`, and no module file is named).
# Prints why not (wait_for shows it) and fails until all of that holds.
gateway_runs_filter() {
  local want="$1" pods pod dump paths path got stats
  pods="$(kube --request-timeout=15s -n istio-system get pods -l istio=ingressgateway -o name)" || return 1
  [ -n "$pods" ] || { echo "no ingress gateway pod"; return 1; }
  for pod in $pods; do
    dump="$(kube --request-timeout=15s -n istio-system exec "$pod" -c istio-proxy -- \
      pilot-agent request GET config_dump)" || return 1
    paths="$(grep -oE '"filename": *"[^"]+[.]wasm"' <<<"$dump" | sed -E 's/^"filename": *"//; s/"$//' | sort -u)" || true
    [ -n "$paths" ] || { echo "$pod: no Wasm module file in its Envoy config yet (not fetched, or refused)"; return 1; }
    while IFS= read -r path; do
      got="$(kube --request-timeout=30s -n istio-system exec "$pod" -c istio-proxy -- cat "$path" | sha256_hex)" || return 1
      if [ "$got" != "$want" ]; then
        echo "$pod runs $path (sha256 $got), not the module just built (sha256 $want)"
        return 1
      fi
    done <<<"$paths"
    stats="$(kube --request-timeout=15s -n istio-system exec "$pod" -c istio-proxy -- \
      pilot-agent request GET stats)" || return 1
    grep -F "wasmcustom.wsgate_tokens_rewritten_total" >/dev/null <<<"$stats" || {
      echo "$pod: the module is in place but the filter's counters are not in its stats yet"
      return 1
    }
  done
}

# service_target_port SERVICE_PORT: the container port behind port SERVICE_PORT of the ingress
# gateway's Service (Istio's chart: 443 -> 8443, 80 -> 8080; the gateway runs unprivileged). A
# port-forward to a pod names the pod's port, not the Service's.
service_target_port() {
  local port
  port="$(kube --request-timeout=5s -n istio-system get svc istio-ingressgateway \
    -o "jsonpath={.spec.ports[?(@.port==$1)].targetPort}")" || return 1
  [ -n "$port" ] || { log "the istio-ingressgateway Service has no port $1"; return 1; }
  printf '%s\n' "$port"
}

# ready_gateway_pod: the name of an ingress gateway pod that is Ready and not terminating, or
# nothing when there is none yet (in the middle of a rollout).
ready_gateway_pod() {
  local pods
  pods="$(kube --request-timeout=5s -n istio-system get pods -l istio=ingressgateway --no-headers \
    -o 'custom-columns=NAME:.metadata.name,DELETING:.metadata.deletionTimestamp,READY:.status.conditions[?(@.type=="Ready")].status')" ||
    return 1
  awk '$2 == "<none>" && $3 == "True" { print $1; exit }' <<<"$pods"
}

# gateway_port_forward HTTPS_PORT HTTP_PORT: keeps `kubectl port-forward` from localhost:HTTPS_PORT
# and :HTTP_PORT to an ingress gateway pod's 443 and 80 running across gateway restarts. Run it in
# the background; TERM ends it and its kubectl. Why not one `kubectl port-forward svc/...`: kubectl
# forwards to one pod, picked when it starts, and does not follow a rollout. Once that pod is
# gone, kubectl may go on listening while every connection fails (kubernetes/kubernetes#67059,
# kubernetes/kubectl#686), and a client could never come back. So this forwards to a pod by name
# and watches it: when that pod no longer exists, or kubectl exited, it starts a new forward to a
# Ready gateway pod that is not terminating. A terminating pod keeps its forward until it is
# gone: the connections on it live until its Envoy exits after draining, as they would behind a
# real load balancer, and a connection opened to it meanwhile fails and is retried.
gateway_port_forward() {
  local https="$1" http="$2" pod="" pf="" nap="" tls_target plain_target present
  # `wait` returns at once on a trapped signal (a foreground command would first run to its end).
  trap 'kill $pf $nap 2>/dev/null || true; exit 0' TERM INT
  tls_target="$(service_target_port 443)" || return 1
  plain_target="$(service_target_port 80)" || return 1
  while :; do
    if [ -n "$pf" ]; then
      if ! kill -0 "$pf" 2>/dev/null; then
        log "port-forward to $pod exited"
        wait "$pf" 2>/dev/null || true
        pf=""
      # --ignore-not-found: nothing printed, and success, only when the pod does not exist; a
      # failed lookup (API server busy) keeps the forward.
      elif present="$(kube --request-timeout=5s -n istio-system get pod "$pod" --ignore-not-found -o name)" &&
        [ -z "$present" ]; then
        log "gateway pod $pod is gone: ending its port-forward"
        kill "$pf" 2>/dev/null || true
        wait "$pf" 2>/dev/null || true
        pf=""
      fi
    fi
    if [ -z "$pf" ]; then
      pod="$(ready_gateway_pod)" || pod=""
      if [ -n "$pod" ]; then
        # kubectl itself in the background (not the kube function), so that $! is its pid.
        kubectl --context "$KCTX" -n istio-system port-forward "pod/$pod" \
          "${https}:${tls_target}" "${http}:${plain_target}" &
        pf=$!
        log "port-forward localhost:${https},${http} -> $pod (pid $pf)"
      fi
    fi
    sleep 1 &
    nap=$!
    wait "$nap" || true
    nap=""
  done
}

# shown FILE: FILE's last lines for a log message, non-printable bytes as `?` (ssh's stderr
# carries the remote side's too).
shown() {
  tail -n 20 "$1" | cut -c 1-200 | tr -c '[:print:]\n' '?'
}

# counts_once FILE COUNT: FILE holds the lines 1..COUNT, each once and in order, as a loop
# printing a counter writes when nothing was lost or delivered twice. Otherwise prints the first
# line that is not what it should be (non-printable bytes shown as `?`), or how many lines there
# are, and fails.
counts_once() {
  awk -v n="$2" '
    $0 != NR "" {
      line = substr($0, 1, 80)
      gsub(/[^[:print:]]/, "?", line)
      printf "line %d is \"%s\", want %d: a number lost, repeated or garbled\n", NR, line, NR
      bad = 1
      exit
    }
    END {
      if (!bad && NR != n) { printf "%d lines, want %d\n", NR, n; bad = 1 }
      exit bad
    }' "$1"
}

# lines_at_least FILE N: FILE has N lines or more (a wait_for condition).
lines_at_least() {
  local have
  have="$(wc -l <"$1")"
  [ "$have" -ge "$2" ] || { echo "$1 has $have line(s), want $2"; return 1; }
}

# has_ended PID: the process is gone (a wait_for condition; the shell reaps its ended children).
has_ended() {
  if kill -0 "$1" 2>/dev/null; then echo "pid $1 still running"; return 1; fi
}

# restart_gateway_during_session COUNT SSH_COMMAND...: the headline of resumable sessions.
# SSH_COMMAND (ssh through `wsgate proxy` and the gateway, its destination included) runs a loop
# on the test pod printing 1..COUNT, one a second. Once the first numbers are through, the
# ingress gateway is restarted (`kubectl rollout restart`) and the rollout awaited. The old
# gateway pod drains for Istio's terminationDrainDuration (5 s by default, well inside the pod's
# 30 s termination grace), then its Envoy exits and closes the session's WebSocket; `wsgate proxy`
# reconnects through the new pod (gateway_port_forward follows it), the sidecar, which had parked
# the connection to sshd, replays what was lost, and ssh sees a pause. Passes when ssh exits 0,
# its output holds every number exactly once, and the client said it resumed; if it never did,
# the restart never reached the session and nothing was shown, which fails too. Output and
# ssh's stderr (the client's lines) stay in $WORK/restart-session.{out,err}.
restart_gateway_during_session() {
  local count="$1" out="$WORK/restart-session.out" err="$WORK/restart-session.err" pid rc=0 wrong
  shift
  : >"$out"
  : >"$err"
  "$@" "for i in \$(seq 1 $count); do echo \$i; sleep 1; done" >"$out" 2>"$err" </dev/null &
  pid=$!
  EXIT_KILL_PIDS="$EXIT_KILL_PIDS $pid"
  if ! wait_for 120 "the first numbers of the loop through the gateway" lines_at_least "$out" 3; then
    log "ssh's stderr: $(shown "$err")"
    return 1
  fi
  log "restarting the ingress gateway while the session prints its counter"
  # `|| return 1`: the caller may run this where `set -e` does not apply (an `if`, a `||`).
  kube -n istio-system rollout restart deploy/istio-ingressgateway || return 1
  kube -n istio-system rollout status deploy/istio-ingressgateway --timeout=240s || return 1
  # The loop's own length, then up to the client's --resume-timeout (3 min) for a late resume.
  if ! wait_for $((count + 200)) "the ssh session to end with its loop" has_ended "$pid"; then
    log "ssh's stderr: $(shown "$err")"
    return 1
  fi
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "ssh exited $rc through the gateway restart; its stderr: $(shown "$err")"
    return 1
  fi
  if ! wrong="$(counts_once "$out" "$count")"; then
    log "the session's output changed across the gateway restart: $wrong"
    return 1
  fi
  if ! grep -F "wsgate: resumed after" "$err" >/dev/null; then
    log "the session was never interrupted: the gateway restart did not reach it, so it proved nothing"
    log "ssh's stderr: $(shown "$err")"
    return 1
  fi
  log "the loop never noticed: $count numbers, each once ($(grep -F "wsgate: resumed after" "$err" | head -n 1))"
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
  for f in kind.yaml hosts.toml istio-e2e.yaml local-registry-hosting.yaml port-forward.log \
    restart-session.out restart-session.err; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$out/" || true; fi
  done
  if [ -d "$WORK/overlay" ]; then cp -r "$WORK/overlay" "$out/" || true; fi
  log "logs collected in $out"
}
