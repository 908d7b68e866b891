"""The istio/ manifests: they render, and the test bed runs the exact pluginConfig they ship.

`cargo test` (filter/core/tests/manifests.rs) parses the same pluginConfig with the filter's own
parser; here the real Envoy runs with it, and the test bed's Envoy config is checked against what
Istio generates for the same Gateway.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from clients import bearer_entry
from k8s.cel_ext import parse_go_duration
from k8s.validate import render
from testbed.envoy import Gateway, listeners

ISTIO = Path(__file__).resolve().parents[2] / "istio"
OVERLAYS = sorted(p.parent.name for p in (ISTIO / "overlays").glob("*/kustomization.yaml"))


def manifest(relpath: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / relpath).read_text()) if d]


def plugin_config() -> dict:
    (plugin,) = manifest("wasmplugin/wasmplugin.yaml")
    return plugin["spec"]["pluginConfig"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_with_kubectl_kustomize(overlay):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    # A gateway, a route to a sidecar, SPDY upgrades, the filter, and a sidecar to route to.
    assert "Gateway" in kinds and kinds & {"VirtualService", "HTTPRoute"}, kinds
    assert any(d["kind"] == "EnvoyFilter" and d["metadata"]["name"] == "wsgate-upgrades" for d in docs)
    assert len(filters(docs)) == 1, f"{overlay}: exactly one copy of the filter, got {filters(docs)}"
    assert sidecar_pod_specs(docs), f"{overlay}: no sidecar"
    assert all(d.get("metadata", {}).get("name") for d in docs)


def test_overlays_cover_the_deployments():
    assert {"central", "pod-side", "envoyfilter", "local-file", "gateway-api", "trafficextension",
            "central-autoscaled", "skypilot-same-host"} <= set(OVERLAYS)


def test_no_kustomization_uses_deprecated_fields():
    """`patchesStrategicMerge` and `patchesJson6902` are deprecated in kustomize v5 (`patches`
    replaces both); `bases` too (`resources`)."""
    for k in ISTIO.rglob("kustomization.yaml"):
        doc = yaml.safe_load(k.read_text())
        assert not {"patchesStrategicMerge", "patchesJson6902", "bases"} & set(doc), k


def filters(docs: list[dict]) -> list[dict]:
    """The objects that put the wsgate filter into a gateway."""
    out = [d for d in docs if d["kind"] in ("WasmPlugin", "TrafficExtension")]
    out += [d for d in docs if d["kind"] == "EnvoyFilter" and d["metadata"]["name"] != "wsgate-upgrades"]
    return out


def kustomize(path: Path) -> list[dict]:
    """`kubectl kustomize path`, by the validator's renderer (one place runs kustomize)."""
    return render(path)


def sidecar_pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload that runs a wsgate-sidecar container."""
    out = []
    for d in docs:
        spec = d.get("spec") or {}
        pod = spec if d["kind"] == "Pod" else (spec.get("template") or {}).get("spec")
        if pod and any(c.get("name") == "wsgate-sidecar" or "wsgate-sidecar" in c.get("image", "")
                       for c in pod.get("containers", []) + pod.get("initContainers", [])):
            out.append((f"{d['kind']}/{d['metadata']['name']}", pod))
    return out


@pytest.mark.parametrize("path", ["sidecar-central", "sidecar-pod-side", *(f"overlays/{o}" for o in OVERLAYS)])
def test_pods_running_the_sidecar_get_no_service_links(path):
    """The sidecar refuses unknown WSGATE_* variables, and Kubernetes gives every pod variables
    named after each Service of its namespace (a Service `wsgate-sidecar` makes
    `WSGATE_SIDECAR_SERVICE_HOST`, `WSGATE_SIDECAR_PORT_8080_TCP`, ...): every pod that runs the
    sidecar turns service links off, or it would not start."""
    pods = sidecar_pod_specs(kustomize(ISTIO / path))
    assert pods, f"{path}: no workload runs wsgate-sidecar"
    for name, pod in pods:
        assert pod.get("enableServiceLinks") is False, f"{path}: {name} lacks enableServiceLinks: false"


def seconds(duration: str) -> float:
    """A Kubernetes/Istio duration such as `5s`, `500ms`, `1m` (Go's syntax)."""
    return parse_go_duration(duration) / 1e9


@pytest.mark.parametrize("path", ["sidecar-central", "sidecar-pod-side"])
def test_the_gateway_closes_idle_connections_before_the_sidecar_does(path):
    """Every Service in front of the sidecar has a DestinationRule whose HTTP idle timeout is
    below the sidecar's --keepalive-timeout: otherwise the gateway may send a request on a
    pooled connection the sidecar is closing at that moment."""
    docs = kustomize(ISTIO / path)
    args = [a for _, pod in sidecar_pod_specs(docs) for c in pod["containers"] for a in c.get("args", [])]
    keepalive = next((a.split("=", 1)[1] for a in args if a.startswith("--keepalive-timeout=")), "10s")
    rules = {d["spec"]["host"].split(".")[0]: d for d in docs if d["kind"] == "DestinationRule"}
    services = [d for d in docs if d["kind"] == "Service" and any(p.get("name") == "http-ws" for p in d["spec"]["ports"])]
    assert services, f"{path}: no Service in front of the sidecar"
    for svc in services:
        name = svc["metadata"]["name"]
        assert name in rules, f"{path}: no DestinationRule for Service {name}"
        idle = rules[name]["spec"]["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"]
        assert seconds(idle) < seconds(keepalive), (name, idle, keepalive)


def test_test_bed_envoy_matches_what_istio_generates(tls):
    """Istio builds a Gateway server with `tls.httpsRedirect: true` into a virtual host with
    `require_tls: ALL` (pilot/pkg/networking/core/gateway.go, buildGatewayHTTPRouteConfig:
    `if server.Tls != nil && server.Tls.HttpsRedirect { vHost.RequireTls = route.VirtualHost_ALL }`),
    puts `use_remote_address: true` on gateway listeners, allows websocket upgrades, and the
    EnvoyFilter in istio/base adds spdy/3.1. The test bed must look the same."""
    by_name = {l["name"]: l for l in listeners("{}", tls)}
    for name, redirect in (("plaintext", True), ("tls", False)):
        hcm = by_name[name]["filter_chains"][0]["filters"][0]["typed_config"]
        vhost = hcm["route_config"]["virtual_hosts"][0]
        assert (vhost.get("require_tls") == "ALL") is redirect
        assert hcm["use_remote_address"] is True
        filters = [f["name"] for f in hcm["http_filters"]]
        assert filters.index("envoy.filters.http.wasm") < filters.index("envoy.filters.http.router")
        upgrades = {u["upgrade_type"] for u in hcm["upgrade_configs"]}
        (ef,) = manifest("upgrades/envoyfilter-upgrades.yaml")
        hcm_patch = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
        assert {u["upgrade_type"] for u in hcm_patch["upgrade_configs"]} | {"websocket"} <= upgrades
        assert hcm["http2_protocol_options"]["allow_connect"] is True
    (gw,) = manifest("base/gateway.yaml")
    plain = [s for s in gw["spec"]["servers"] if s["port"]["protocol"] == "HTTP"]
    assert plain and plain[0]["tls"]["httpsRedirect"] is True


@pytest.fixture(scope="module")
def manifest_gateway(workdir, backend, tls):
    """The real Envoy running the WasmPlugin's pluginConfig, unchanged."""
    g = Gateway(workdir / "manifest-gw", json.dumps(plugin_config()), backend.port, tls).start()
    yield g
    g.stop()
    assert not g.vm_crashes(), g.vm_crashes()


def test_shipped_config_routes_skypilot_and_rewrites_tokens(manifest_gateway, backend, tls):
    tid = "manifest-" + bearer_entry("x")[-6:]
    with connect(
        f"wss://localhost:{manifest_gateway.ports['tls']}/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62",
        ssl=tls.client_context(),
        subprotocols=[bearer_entry("manifest-token"), "v4.channel.k8s.io"],
        additional_headers={"x-test-id": tid, "Origin": "https://ui.example.com"},
        open_timeout=10,
    ) as ws:
        ws.send("ok")
        assert ws.recv(timeout=10) == "ok"
    rec = backend.find(tid)
    headers = dict(rec["headers"])
    assert headers["x-wsgate-cluster"] == "prod"
    assert headers["x-testbed-route"] == "cluster-route"
    assert headers["authorization"] == "Bearer manifest-token"
    assert "origin" not in headers


def test_shipped_config_guards_plaintext_upgrades(manifest_gateway):
    with pytest.raises(InvalidStatus) as e:
        connect(f"ws://127.0.0.1:{manifest_gateway.ports['plaintext']}/kubernetes-pod-ssh-proxy?cluster_name=prod",
                open_timeout=10)
    assert e.value.response.status_code == 426
    # httpsRedirect to the standard port: the hint drops the plaintext port.
    assert e.value.response.headers["x-wsgate-websocket-url"] == \
        "wss://127.0.0.1/kubernetes-pod-ssh-proxy?cluster_name=prod"


def rendered(overlay: str) -> list[dict]:
    return kustomize(ISTIO / "overlays" / overlay)


# The HTTP filters Istio 1.27 builds into a gateway's HTTP connection manager, in order, with
# the slots where WasmPlugins/TrafficExtensions of each phase go (istio/istio
# pilot/pkg/networking/core/listener_builder.go, buildHTTPConnectionManager). EnvoyFilter
# patches are applied to this built list afterwards (envoyfilter/listener_patch.go).
ISTIO_GATEWAY_HTTP_FILTERS = [
    "istio.metadata_exchange",
    "envoy.filters.http.ext_authz",  # AuthorizationPolicy action CUSTOM
    "<AUTHN>",
    "envoy.filters.http.jwt_authn",  # RequestAuthentication
    "istio_authn",
    "<AUTHZ>",
    "envoy.filters.http.rbac",  # AuthorizationPolicy ALLOW/DENY
    "<STATS>",
    "envoy.filters.http.fault",
    "envoy.filters.http.cors",
    "istio.stats",
    "envoy.filters.http.router",
]


def gateway_chain(docs: list[dict]) -> list[str]:
    """Istio's gateway filter chain with the rendered objects' wsgate filter placed the way
    Istio places it: a WasmPlugin/TrafficExtension in its phase's slot, an EnvoyFilter
    HTTP_FILTER patch by its operation."""
    chain = list(ISTIO_GATEWAY_HTTP_FILTERS)
    for d in filters(docs):
        if d["kind"] in ("WasmPlugin", "TrafficExtension"):
            chain.insert(chain.index(f"<{d['spec'].get('phase', 'UNSPECIFIED')}>"), "wsgate")
            continue
        for p in d["spec"]["configPatches"]:
            if p["applyTo"] != "HTTP_FILTER":
                continue
            match = p["match"]["listener"]["filterChain"]["filter"]
            assert p["match"]["context"] == "GATEWAY"
            assert match["name"] == "envoy.filters.network.http_connection_manager"
            op, sub = p["patch"]["operation"], match.get("subFilter", {}).get("name")
            if op == "INSERT_FIRST" or (op == "INSERT_BEFORE" and sub is None):
                chain.insert(0, "wsgate")
            elif op == "INSERT_BEFORE":
                chain.insert(chain.index(sub), "wsgate")
            elif op == "INSERT_AFTER":
                chain.insert(chain.index(sub) + 1, "wsgate")
            else:
                raise AssertionError(f"unexpected EnvoyFilter operation {op}")
    return [f for f in chain if not f.startswith("<")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_filter_runs_before_istio_authentication_and_authorization(overlay):
    """RequestAuthentication and AuthorizationPolicy must see the Authorization header made from
    a subprotocol token, and routing sees the header the filter set: whichever kind carries
    the filter, it runs before jwt_authn, istio_authn and RBAC."""
    chain = gateway_chain(rendered(overlay))
    assert chain.count("wsgate") == 1, chain
    for later in ("envoy.filters.http.jwt_authn", "istio_authn", "envoy.filters.http.rbac",
                  "envoy.filters.http.router"):
        assert chain.index("wsgate") < chain.index(later), (overlay, chain)


def test_every_filter_fails_closed_and_recovers():
    """Never FAIL_OPEN (unfiltered requests would carry subprotocol tokens to backends and
    forged routing headers); FAIL_RELOAD everywhere, so a crashed VM is replaced instead of
    answering 503 until the gateway restarts (docs/deploy-istio.md, failure behaviour)."""
    seen = []
    for overlay in OVERLAYS:
        for d in filters(rendered(overlay)):
            if d["kind"] == "WasmPlugin":
                seen.append((overlay, d["spec"]["failStrategy"]))
            elif d["kind"] == "TrafficExtension":
                seen.append((overlay, d["spec"]["wasm"]["failStrategy"]))
            else:
                for p in d["spec"]["configPatches"]:
                    seen.append((overlay, p["patch"]["value"]["typed_config"]["config"]["failure_policy"]))
    assert len(seen) == len(OVERLAYS), seen
    assert {s for _, s in seen} == {"FAIL_RELOAD"}, seen


def test_the_sidecar_may_only_list_pods():
    """The sidecar finds a cluster's pods with one labelled list per session and never gets or
    watches one: the RBAC grants `list` and nothing else on pods."""
    source = (ISTIO.parent / "sidecar" / "src" / "kube.rs").read_text()
    assert ".list(" in source and "watcher(" not in source and "pods.get(" not in source
    rules = [r for d in kustomize(ISTIO / "sidecar-central") if d["kind"] in ("Role", "ClusterRole")
             for r in d["rules"] if "pods" in r.get("resources", [])]
    assert rules and all(r["verbs"] == ["list"] for r in rules), rules


@pytest.mark.parametrize("path", ["sidecar-central", "sidecar-pod-side"])
def test_sidecar_pods_are_confined(path):
    """RuntimeDefault seccomp and no service-account token where the sidecar does not talk to
    the Kubernetes API (pod-side with a token file); non-root, no capabilities, read-only."""
    for name, pod in sidecar_pod_specs(kustomize(ISTIO / path)):
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        (c,) = [c for c in pod["containers"] if c["name"] == "wsgate-sidecar"]
        uses_api = any(a.startswith(("--kube-", "--auth=token-review")) for a in c["args"])
        assert pod.get("automountServiceAccountToken", True) is uses_api, name
        sc = {**pod["securityContext"], **c["securityContext"]}
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_gateway_api_overlay_attaches_everything_to_its_gateway():
    """Gateway API: the filter and the SPDY upgrade attach to the wsgate Gateway by targetRefs
    (same namespace: Istio ignores a cross-namespace one), port 80 only redirects, the SSH
    route matches the filter's header, and only that Gateway's pods reach the sidecar."""
    docs = rendered("gateway-api")
    (gw,) = [d for d in docs if d["kind"] == "Gateway"]
    assert gw["apiVersion"].startswith("gateway.networking.k8s.io/") and gw["spec"]["gatewayClassName"] == "istio"
    ns = gw["metadata"]["namespace"]
    for d in docs:
        if d["kind"] in ("WasmPlugin", "EnvoyFilter"):
            assert d["metadata"]["namespace"] == ns, d["metadata"]
            assert "selector" not in d["spec"] and "workloadSelector" not in d["spec"]
            assert d["spec"]["targetRefs"] == [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw["metadata"]["name"]}]
    routes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HTTPRoute"}
    listeners = {l["name"]: l for l in gw["spec"]["listeners"]}
    redirect = routes["wsgate-https-redirect"]
    assert listeners[redirect["spec"]["parentRefs"][0]["sectionName"]]["protocol"] == "HTTP"
    assert redirect["spec"]["rules"][0]["filters"][0]["requestRedirect"]["scheme"] == "https"
    ssh = routes["wsgate-ssh"]
    assert listeners[ssh["spec"]["parentRefs"][0]["sectionName"]]["protocol"] == "HTTPS"
    (rule,) = ssh["spec"]["rules"]
    assert rule["matches"][0]["headers"][0]["name"] == "x-wsgate-cluster"
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service" and d["metadata"]["namespace"] == ns}
    assert {b["name"] for b in rule["backendRefs"]} <= services
    (netpol,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    peers = netpol["spec"]["ingress"][0]["from"]
    assert peers == [{"podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": gw["metadata"]["name"]}}}]


def test_skypilot_same_host_sends_everything_else_to_the_api_server():
    """Sharing a hostname with SkyPilot's API server: the wsgate route first (first match wins),
    then a catch-all to the API server, which SkyPilot clients call on the same host."""
    docs = rendered("skypilot-same-host")
    (vs,) = [d for d in docs if d["kind"] == "VirtualService"]
    first, last = vs["spec"]["http"][0], vs["spec"]["http"][-1]
    assert first["match"][0]["headers"]["x-wsgate-cluster"] == {"regex": ".+"}
    assert "match" not in last, "the API server route must catch everything else"
    assert last["route"][0]["destination"]["host"].startswith("skypilot-api-service.")
    assert "*" not in vs["spec"]["hosts"]


def test_autoscaled_sidecar_scales_down_slowly():
    """A scale-down ends the sessions of the replica it removes (after the drain): one replica
    at a time, after a long quiet window, and the Deployment leaves the count to the HPA."""
    docs = rendered("central-autoscaled")
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert "replicas" not in dep["spec"]
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert all(p["type"] == "Pods" and p["value"] == 1 and p["periodSeconds"] >= 300 for p in down["policies"])
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    grace = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--shutdown-grace="))
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > seconds(grace)
    assert hpa["spec"]["minReplicas"] >= 2
