"""Safety properties of the filter that hold whatever its configuration, in a real Envoy.

- A client never picks its backend: with `pluginConfig` `{}` (no rules) or with rules that use
  their own routing header, a client-sent `x-wsgate-cluster` (or any rule's header) never
  reaches the backend, and the testbed's header-matching route (the VirtualService's) is never
  taken because of it.
- Config types are strict: an array where an object belongs is a configuration error, and
  Envoy refuses the configuration.
- The per-reason counters reach `/stats/prometheus` as one family each with a `reason` label,
  with the `stats_config` Istio writes for `extraStatTags: ["reason"]`.
- A header value that is not UTF-8 does not crash the filter.

Each gateway here is started by this module (the suite's shared one runs a fuller config).
"""
from __future__ import annotations

import json
import re
import sys
import time
import uuid

import pytest

from clients import bearer_entry, h2_websocket, raw_request, upgrade_headers
from testbed.envoy import EnvoyExited, Gateway, istio_stats_config

TOKEN_REASONS = ["multiple_tokens", "invalid_encoding", "invalid_utf8", "control_characters", "missing_subprotocol"]
ROUTE_REASONS = ["missing_cluster", "ambiguous_cluster", "invalid_cluster", "unknown_cluster"]

# Rules with their own routing header, so the default one is used by none of them.
CUSTOM_HEADER_CONFIG = {
    "routes": [
        {"name": "ui", "pattern": "/c/{cluster}", "header": "x-ui-cluster", "allowedClusters": ["dev"]},
    ],
}


def new_id() -> str:
    return uuid.uuid4().hex


def header(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k == name]


def wait_for(what, timeout: float = 8.0):
    """Polls `what()` until it returns something truthy (Envoy merges worker stats on its flush
    interval)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def start(workdir, name: str, config: str, backend, tls, request, **kw) -> Gateway:
    gw = Gateway(workdir / f"{name}-{uuid.uuid4().hex[:8]}", config, backend.port, tls, **kw).start()
    request.addfinalizer(lambda: _stop(gw, request))
    return gw


def _stop(gw: Gateway, request) -> None:
    gw.stop()
    if request.session.testsfailed:
        sys.stderr.write(f"\n===== envoy log ({gw.log_path}) =====\n{gw.log()[-8000:]}\n")


@pytest.fixture(scope="module")
def empty_gateway(workdir, backend, tls, request):
    """The filter with `pluginConfig` `{}`."""
    return start(workdir, "empty-config", "{}", backend, tls, request)


@pytest.fixture(scope="module")
def istio_gateway(workdir, backend, tls, request):
    """Rules with a custom routing header, and the bootstrap `stats_config` istio-agent writes
    for a gateway with `extraStatTags: ["reason"]`."""
    return start(workdir, "istio-stats", json.dumps(CUSTOM_HEADER_CONFIG), backend, tls, request,
                 stats_config=istio_stats_config(["reason"]))


# --- A client never picks its backend ------------------------------------------------------


@pytest.mark.parametrize(
    "case, path, upgrade, forged",
    [
        ("plain GET", "/anything", False, [("x-wsgate-cluster", "prod")]),
        ("WebSocket upgrade", "/api/v1/exec", True, [("x-wsgate-cluster", "prod")]),
        ("empty value", "/anything", False, [("x-wsgate-cluster", "")]),
        ("two lines", "/anything", True, [("x-wsgate-cluster", "prod"), ("X-Wsgate-Cluster", "dev")]),
        ("SkyPilot's URL, which no rule of {} routes", "/kubernetes-pod-ssh-proxy?cluster_name=prod", True,
         [("x-wsgate-cluster", "prod")]),
    ],
)
def test_empty_config_strips_client_sent_routing_header(empty_gateway, backend, tls, case, path, upgrade, forged):
    """`{}` routes nothing, yet a client-sent `x-wsgate-cluster` is removed: the backend never
    sees it and the header-matching route is not taken."""
    gw, tid = empty_gateway, new_id()
    before = gw.counters().get("wsgate_forged_headers_removed_total", 0)
    headers = (upgrade_headers(tid) if upgrade else [("x-test-id", tid)]) + forged
    r = raw_request(gw.ports["tls"], path, headers, tls_context=tls.client_context())
    assert r.status == (101 if upgrade else 200), (case, r)
    rec = backend.find(tid)
    assert rec is not None, case
    assert header(rec, "x-wsgate-cluster") == [], case
    assert header(rec, "x-testbed-route") == ["default"], case
    assert wait_for(lambda: gw.counters().get("wsgate_forged_headers_removed_total", 0) > before), case


def test_empty_config_strips_the_header_on_h2_websockets(empty_gateway, backend, tls):
    """The same over an RFC 8441 HTTP/2 WebSocket."""
    tid = new_id()
    res = h2_websocket(empty_gateway.ports["tls"], tls.client_context(alpn=["h2"]), "/api/v1/exec",
                       [("x-test-id", tid), ("x-wsgate-cluster", "prod")])
    assert res.status == 200, res
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == []
    assert header(rec, "x-testbed-route") == ["default"]


@pytest.mark.parametrize(
    "case, path, want_ui_cluster",
    [
        ("no rule matches", "/elsewhere", []),
        ("the rule matches: it sets its own value", "/c/dev/x", ["dev"]),
    ],
)
def test_custom_header_rules_strip_the_default_header_too(istio_gateway, backend, tls, case, path, want_ui_cluster):
    """Rules that route on `x-ui-cluster`: a forged `x-ui-cluster` and a forged
    `x-wsgate-cluster` are both removed; a matching rule then sets `x-ui-cluster` to the
    validated cluster."""
    tid = new_id()
    r = raw_request(istio_gateway.ports["tls"], path,
                    [("x-test-id", tid), ("x-ui-cluster", "prod"), ("x-wsgate-cluster", "prod")],
                    tls_context=tls.client_context())
    assert r.status == 200, (case, r)
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == [], case
    assert header(rec, "x-ui-cluster") == want_ui_cluster, case
    assert header(rec, "x-testbed-route") == ["default"], case


# --- Strict config types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ("[]", "invalid pluginConfig: pluginConfig: expected an object, found an array"),
        ('{"tokenRewrite": [false]}', "invalid pluginConfig: tokenRewrite: expected an object, found an array"),
        ('{"routes": [["ui", "/c/{cluster}"]]}', "invalid pluginConfig: routes[0]: expected an object, found an array"),
        ('"{}"', "invalid pluginConfig: pluginConfig: expected an object, found a string"),
    ],
)
def test_non_object_config_is_refused(workdir, backend, tls, config, message):
    """An array (or any non-object) where an object belongs fails `on_configure`: the static
    bootstrap exits at start, with one log line naming the JSON path."""
    gw = Gateway(workdir / f"bad-{uuid.uuid4().hex[:8]}", config, backend.port, tls)
    with pytest.raises(EnvoyExited) as e:
        gw.start()
    lines = [l for l in e.value.log.splitlines() if "invalid pluginConfig" in l]
    assert lines and message in lines[0], e.value.log[-3000:]


# --- Metrics with a reason label -----------------------------------------------------------


def family(prom: str, name: str) -> dict[str, int]:
    """One Prometheus family from `/stats/prometheus`: value by `reason` label."""
    out = {}
    for m in re.finditer(rf'^{name}\{{reason="([^"]*)"\}} (\d+)$', prom, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def test_reason_counters_are_one_family_with_a_reason_label(istio_gateway, backend, tls):
    """With Istio's bootstrap stats config (`extraStatTags: ["reason"]`, its default stats
    matcher, no Envoy default tags), each per-reason counter family appears once in
    `/stats/prometheus`, every reason as a `reason` label, zeros included, and a refused request
    counts under its reason."""
    gw = istio_gateway
    tok = "wsgate-e2e-metrics-token"
    r = raw_request(gw.ports["tls"], "/api/v1/exec", upgrade_headers(new_id(), bearer_entry(tok)),
                    tls_context=tls.client_context())
    assert (r.status, r.json()["reason"]) == (400, "missing_subprotocol")
    r = raw_request(gw.ports["tls"], "/c/prod", upgrade_headers(new_id()), tls_context=tls.client_context())
    assert (r.status, r.json()["reason"]) == (404, "unknown_cluster")

    def counted():
        prom = gw.get("/stats/prometheus")
        ok = (family(prom, "wsgate_token_errors_total").get("missing_subprotocol") == 1
              and family(prom, "wsgate_route_rejections_total").get("unknown_cluster") == 1)
        return prom if ok else None

    prom = wait_for(counted)
    assert prom, gw.get("/stats/prometheus")
    assert 'wsgate_token_errors_total{reason="missing_subprotocol"} 1' in prom.splitlines()
    assert 'wsgate_route_rejections_total{reason="unknown_cluster"} 1' in prom.splitlines()
    for name, reasons in [("wsgate_token_errors_total", TOKEN_REASONS), ("wsgate_route_rejections_total", ROUTE_REASONS)]:
        assert prom.count(f"# TYPE {name} counter") == 1, name
        assert sorted(family(prom, name)) == sorted(reasons), name
    assert "reason___" not in prom, "an untagged per-reason name is left"
    # The rest keep their names, without labels.
    assert re.search(r"^wsgate_upgrades_total\{\} \d+$", prom, re.M)
    # Istio's stats matcher is in effect (the listener's own request counters are dropped), and
    # its required `wasm` prefix is what keeps the filter's counters.
    assert "http.tls.downstream_rq_total" not in gw.get("/stats")
    assert tok not in gw.log()


def test_without_the_reason_tag_the_counters_keep_distinct_names(gateway, tls):
    """Plain Envoy defaults (no `reason` tag regex): each per-reason counter is still its own,
    readable Prometheus name, `<family>_reason___<reason>___total`."""
    r = raw_request(gateway.ports["tls"], "/api/v1/exec", upgrade_headers(new_id(), bearer_entry("wsgate-e2e-x")),
                    tls_context=tls.client_context())
    assert r.json()["reason"] == "missing_subprotocol"

    def counted():
        prom = gateway.get("/stats/prometheus")
        return prom if re.search(r"^wsgate_token_errors_reason___missing_subprotocol___total\{\} [1-9]", prom, re.M) else None

    prom = wait_for(counted)
    assert prom, gateway.get("/stats/prometheus")
    for reason in TOKEN_REASONS:
        assert f"wsgate_token_errors_reason___{reason}___total{{}}" in prom, reason
    for reason in ROUTE_REASONS:
        assert f"wsgate_route_rejections_reason___{reason}___total{{}}" in prom, reason


# --- Header values that are not UTF-8 ------------------------------------------------------


@pytest.mark.parametrize(
    "case, path, headers, status",
    [
        ("WebSocket upgrade with an obs-text header", "/api/v1/exec",
         lambda tid: upgrade_headers(tid) + [("x-junk", "caf\xe9 \xff")], 101),
        ("plain GET, obs-text in Upgrade", "/anything", lambda tid: [("x-test-id", tid), ("Upgrade", "web\xffsocket")], 200),
        ("obs-text in the routing header", "/anything", lambda tid: [("x-test-id", tid), ("x-wsgate-cluster", "\xff")], 200),
    ],
)
def test_non_utf8_header_values_do_not_crash_the_filter(empty_gateway, backend, tls, case, path, headers, status):
    """Envoy delivers header bytes 0x80-0xFF (HTTP obs-text). The filter handles them (a crash
    would kill the worker's VM: every later request on it a 503). Sent several times so both
    workers see it, then ordinary requests still pass."""
    gw = empty_gateway
    for _ in range(4):
        tid = new_id()
        r = raw_request(gw.ports["tls"], path, headers(tid), tls_context=tls.client_context())
        assert r.status == status, (case, r)
        rec = backend.find(tid)
        assert rec is not None and header(rec, "x-wsgate-cluster") == [], case
    for _ in range(6):
        tid = new_id()
        r = raw_request(gw.ports["tls"], "/after", [("x-test-id", tid)], tls_context=tls.client_context())
        assert r.status == 200, (case, r)
    assert "panicked" not in gw.log()
