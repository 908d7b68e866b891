"""The istio/ manifests: they render, and the test bed runs the exact pluginConfig they ship.

`cargo test` (filter/core/tests/manifests.rs) parses the same pluginConfig with the filter's own
parser; here the real Envoy runs with it, and the test bed's Envoy config is checked against what
Istio generates for the same Gateway. A second real Envoy, configured as istiod configures the
gateway for the central sidecar's session label, shows resumes reaching their replica.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from clients import bearer_entry
from k8s.cel_ext import parse_go_duration
from k8s.validate import render
from testbed.backend import RecordingBackend
from testbed.envoy import ENVOY, Gateway, listeners, stateful_session_per_route

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
        http = rules[name]["spec"]["trafficPolicy"]["connectionPool"]["http"]
        assert seconds(http["idleTimeout"]) < seconds(keepalive), (name, http["idleTimeout"], keepalive)
        # The sidecar speaks HTTP/1.1 only: a mesh-wide h2UpgradePolicy must not reach it.
        assert http["h2UpgradePolicy"] == "DO_NOT_UPGRADE", name


# --- resumes reach their replica: the persistent-session label ------------------------------

SESSION_HEADER_LABEL = "istio.io/persistent-session-header"
# The header `wsgate proxy` echoes when it resumes (its --route-header default, docs/resume.md).
ROUTE_HEADER = "x-wsgate-route"


def central_sidecar_service(docs: list[dict]) -> dict:
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "wsgate-sidecar"]
    return svc


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "pod-side"])
def test_the_central_sidecar_asks_istio_for_header_sessions(overlay):
    """Several central replicas: a resume must reach the one that parked the session. The
    Service's label names the header Envoy's stateful session writes and reads, which must be
    the one the client echoes, and the filter must let it through (it removes the routing
    headers it sets, and a rule's removeHeaders)."""
    svc = central_sidecar_service(rendered(overlay))
    assert svc["metadata"]["labels"][SESSION_HEADER_LABEL] == ROUTE_HEADER
    for route in plugin_config()["routes"]:
        removed = {route.get("header", "x-wsgate-cluster"), *route.get("removeHeaders", [])}
        assert ROUTE_HEADER not in {h.lower() for h in removed}, route["name"]


def test_istiod_builds_the_stateful_session_filter():
    """istiod ignores the label unless PILOT_ENABLE_PERSISTENT_SESSION_FILTER is on (off by
    default: pilot/pkg/features, MaybeBuildStatefulSessionFilterConfig in
    pilot/pkg/networking/util). It is set in the istiod chart's `pilot.env` map, a string as
    every env value: istioctl merges a map from a second -f file (testenv/kind's) instead of
    replacing it, as it would a list."""
    (iop,) = manifest("istio-operator.yaml")
    assert iop["spec"]["values"]["pilot"]["env"]["PILOT_ENABLE_PERSISTENT_SESSION_FILTER"] == "true"
    assert "pilot" not in iop["spec"].get("components", {}), "a components.pilot.k8s.env list would be replaced whole"


def test_pod_side_services_need_no_session_label():
    """One sidecar per cluster pod: nothing to choose between, so no label (and no filter)."""
    docs = kustomize(ISTIO / "sidecar-pod-side")
    assert all(SESSION_HEADER_LABEL not in d["metadata"].get("labels", {}) for d in docs if d["kind"] == "Service")


def istio_route_session_config(service: dict) -> dict | None:
    """The per-route stateful session configuration istiod 1.27 builds for a route whose
    destination is `service` (pilot/pkg/networking/util/util.go,
    MaybeBuildStatefulSessionFilterConfig; route.go puts it in the route's
    typed_per_filter_config), with PILOT_ENABLE_PERSISTENT_SESSION_FILTER on. No `strict`:
    an unknown or unavailable host falls back to load balancing."""
    header = service["metadata"].get("labels", {}).get(SESSION_HEADER_LABEL)
    if not header:
        return None
    return stateful_session_per_route(header)


class StickyGateway:
    """A real Envoy shaped like the ingress gateway's route to the central sidecar, as istiod
    builds it for the shipped Service: the empty stateful session filter in the connection
    manager (Istio's EmptySessionFilter), the per-route session configuration from the label,
    and an EDS cluster whose endpoints (the replicas) the test changes as the API server would
    (a terminating pod DRAINING, a deleted one gone). For Services with the label, istiod keeps
    DRAINING endpoints and lets an override select them (cluster.go: SupportsDrainingEndpoints,
    override_host_status); they get no new sessions."""

    CLUSTER = "wsgate-sidecar"

    def __init__(self, workdir: Path, per_route: dict) -> None:
        self.workdir = workdir
        self.per_route = per_route
        self.version = 0
        self.proc: subprocess.Popen | None = None
        self.admin = ""
        self.port = 0

    @property
    def eds_file(self) -> Path:
        return self.workdir / "eds.json"

    def set_endpoints(self, endpoints: dict[int, str]) -> None:
        """port -> EDS health status; Envoy reads the file when it is moved into place."""
        self.version += 1
        cla = {
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": self.CLUSTER,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
                 "health_status": status}
                for port, status in endpoints.items()
            ]}],
        }
        tmp = self.workdir / "eds.json.tmp"
        tmp.write_text(json.dumps({"version_info": str(self.version), "resources": [cla]}))
        os.replace(tmp, self.eds_file)
        if self.proc is not None:
            self._wait(lambda: self._stat(f"cluster.{self.CLUSTER}.update_success") >= self.version,
                       f"EDS version {self.version}")

    def bootstrap(self) -> dict:
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gateway",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "stream_idle_timeout": "0s",
            "route_config": {"virtual_hosts": [{
                "name": "wsgate", "domains": ["*"],
                "routes": [{
                    "match": {"prefix": "/"},
                    "route": {"cluster": self.CLUSTER, "timeout": "0s"},
                    "typed_per_filter_config": {"envoy.filters.http.stateful_session": self.per_route},
                }],
            }]},
            "http_filters": [
                {"name": "envoy.filters.http.stateful_session", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"}},
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
            ],
        }
        return {
            "node": {"id": "wsgate-sticky", "cluster": "wsgate-sticky"},  # xDS from files needs both
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}]}],
                }],
                "clusters": [{
                    "name": self.CLUSTER,
                    "type": "EDS",
                    "connect_timeout": "2s",
                    "lb_policy": "LEAST_REQUEST",  # Istio's default
                    "eds_cluster_config": {"eds_config": {"path_config_source": {"path": str(self.eds_file)},
                                                          "resource_api_version": "V3"}},
                    "common_lb_config": {"override_host_status": {
                        "statuses": ["HEALTHY", "DRAINING", "UNKNOWN", "DEGRADED"]}},
                }],
            },
        }

    def start(self, endpoints: dict[int, str]) -> "StickyGateway":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_endpoints(endpoints)
        cfg = self.workdir / "bootstrap.json"
        cfg.write_text(json.dumps(self.bootstrap(), indent=1))
        admin_file = self.workdir / "admin-address"
        with open(self.workdir / "envoy.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(ENVOY), "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1",
                 "--base-id", str(secrets.randbelow(1 << 30)), "--admin-address-path", str(admin_file),
                 "-l", "info"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log()}")
            if not (admin_file.exists() and admin_file.read_text().strip()):
                return False
            self.admin = "http://" + admin_file.read_text().strip()
            return self._get("/ready") == "LIVE\n"
        self._wait(ready, "envoy ready")
        (st,) = json.loads(self._get("/listeners?format=json"))["listener_statuses"]
        self.port = st["local_address"]["socket_address"]["port_value"]
        return self

    def log(self) -> str:
        path = self.workdir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            return r.read().decode()

    def _stat(self, name: str) -> int:
        for line in self._get(f"/stats?filter=^{re.escape(name)}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def _wait(self, cond, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; envoy log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def encoded(port: int) -> str:
    """The header value Envoy writes for the upstream host 127.0.0.1:port."""
    return base64.b64encode(f"127.0.0.1:{port}".encode()).decode()


def test_a_resume_reaches_the_replica_that_holds_the_session(workdir):
    """The headline of the label, in a real Envoy configured as istiod configures the gateway
    for the shipped Service: the `101` of a new session names its replica; a reconnect echoing
    it reaches that replica every time (without the header, least-request would spread them),
    also while the replica drains (a terminating pod takes no new sessions but gets its own
    resumes); a value naming no replica, or one that is gone, falls back to load balancing and
    the answer names the replica chosen instead. A client can pick any replica of the Service
    by this header, and nothing outside it."""
    per_route = istio_route_session_config(central_sidecar_service(kustomize(ISTIO / "sidecar-central")))
    assert per_route is not None
    a, b = RecordingBackend().start(), RecordingBackend().start()
    gw = StickyGateway(workdir / "sticky-gw", per_route)
    try:
        gw.start({a.port: "HEALTHY", b.port: "HEALTHY"})
        replicas = {a.port: a, b.port: b}
        n = 0

        def session(route: str | None) -> tuple[int, str | None]:
            """Opens a WebSocket through the gateway; (the replica that got it, the route
            header of the 101)."""
            nonlocal n
            n += 1
            tid = f"sticky-{n}"
            headers = {"x-test-id": tid, **({ROUTE_HEADER: route} if route is not None else {})}
            # close_timeout: after the close handshake the client waits for the server side to
            # close the TCP connection, and Envoy waits for the client (delayed_close_timeout,
            # 1 s): no need to sit that out 50 times.
            with connect(f"ws://127.0.0.1:{gw.port}/kubernetes-pod-ssh-proxy", additional_headers=headers,
                         open_timeout=10, close_timeout=0.1) as ws:
                ws.send("ping")
                assert ws.recv(timeout=10) == "ping"
                answer = ws.response.headers.get(ROUTE_HEADER)
            # Recorded before the 101 was sent: no waiting.
            got = [port for port, r in replicas.items() if r.find(tid, timeout=0)]
            assert len(got) == 1, (tid, got)
            return got[0], answer

        first, route = session(None)
        assert route == encoded(first), "the 101 must name the replica that took the session"
        other = b.port if first == a.port else a.port
        # Without the header, new sessions spread over both replicas (least-request); with it,
        # every reconnect reaches the first one.
        assert {session(None)[0] for _ in range(20)} == {first, other}
        for _ in range(8):
            assert session(route) == (first, None)  # no new header: the client's is still right

        # The replica's pod is terminating: no new sessions, but its own resumes still reach it.
        gw.set_endpoints({first: "DRAINING", other: "HEALTHY"})
        assert {session(None)[0] for _ in range(6)} == {other}
        for _ in range(4):
            assert session(route)[0] == first

        # Forged or stale values: load balancing decides, and the 101 names its choice.
        for forged in (encoded(1), "not base64!", base64.b64encode(b"10.0.0.1:22").decode()):
            assert session(forged) == (other, encoded(other))
        # The pod is gone (deleted from the endpoints): the resume lands elsewhere, where the
        # sidecar will refuse it (404, unknown session) and the client reports the loss.
        gw.set_endpoints({other: "HEALTHY"})
        assert session(route) == (other, encoded(other))
    finally:
        gw.stop()
        a.stop()
        b.stop()


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
    # With PILOT_ENABLE_PERSISTENT_SESSION_FILTER (istio-operator.yaml): empty here, configured
    # per route for Services labelled istio.io/persistent-session-header.
    "envoy.filters.http.stateful_session",
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
