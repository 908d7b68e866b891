"""The istio/ manifests: they render, and the test bed runs the exact pluginConfig they ship.

`cargo test` (filter/core/tests/manifests.rs) parses the same pluginConfig with the filter's own
parser; here the real Envoy runs with it, and the test bed's Envoy config is checked against what
Istio generates for the same Gateway.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from clients import bearer_entry
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
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: run testenv/setup.sh (make test does)"
    r = subprocess.run([kubectl, "kustomize", str(ISTIO / "overlays" / overlay)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Gateway", "VirtualService", "EnvoyFilter"} <= kinds, kinds
    assert kinds & {"WasmPlugin", "EnvoyFilter"}
    assert all(d.get("metadata", {}).get("name") for d in docs)


def test_overlays_cover_the_three_deployments():
    assert {"central", "pod-side", "envoyfilter", "local-file"} <= set(OVERLAYS)


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: run testenv/setup.sh (make test does)"
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return [d for d in yaml.safe_load_all(r.stdout) if d]


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
    """A Kubernetes/Istio duration such as `5s`, `500ms`, `1m`."""
    for unit, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if duration.endswith(unit) and duration[: -len(unit)].replace(".", "", 1).isdigit():
            return float(duration[: -len(unit)]) * factor
    raise ValueError(duration)


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
        (ef,) = manifest("base/envoyfilter-upgrades.yaml")
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
