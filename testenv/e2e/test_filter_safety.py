"""Safety properties of the filter that hold whatever its configuration, in a real Envoy.

- A client never picks its backend: with `pluginConfig` `{}` (no rules) or with rules that use
  their own routing header, a client-sent `x-wsgate-cluster` (or any rule's header) never
  reaches the backend, and the testbed's header-matching route (the VirtualService's) is never
  taken because of it.
- Config types are strict: an array where an object belongs is a configuration error, and
  Envoy refuses the configuration.
- The per-reason counters reach `/stats/prometheus` as one family each with a `reason` label,
  with the `stats_config` Istio writes for `extraStatTags: ["reason"]`.
- A header value that is not UTF-8 does not crash the filter, and is never forwarded altered:
  one the filter would rewrite (a `Sec-WebSocket-Protocol` line it strips a token from, a path a
  route strips) gets a 400 `non_utf8_header`; one it only reads reaches the backend byte for byte.

Each gateway here is started by this module (the suite's shared one runs a fuller config).
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import threading
import time
import uuid

import h2.config
import h2.connection
import h2.events
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
    assert not gw.vm_crashes(), f"the filter's VM crashed: {gw.vm_crashes()}"


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
    would kill the worker's VM: a 503, and under FAIL_CLOSED every later request on that worker
    too). Sent several times so both workers see it, then ordinary requests still pass."""
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


# --- Non-UTF-8 bytes are never forwarded altered -------------------------------------------

# What a lossy UTF-8 read puts in place of bytes that are not UTF-8 (U+FFFD).
REPLACEMENT = "\ufffd".encode()

# A route that strips its prefix (the filter rewrites `:path`) and one that does not.
OBS_TEXT_CONFIG = {
    "routes": [
        {"name": "ui", "pattern": "/c/{cluster}", "stripPrefix": True},
        {"name": "sky", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name"},
    ],
}


class RawBackend:
    """A backend that keeps every request head exactly as the bytes that arrived (the recording
    backend's parser decodes them, and refuses a path that is not ASCII), and answers 200."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, name="raw-backend", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf and len(buf) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                with self._lock:
                    self.heads.append(buf.partition(b"\r\n\r\n")[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            except OSError:
                pass

    def find(self, test_id: str, timeout: float = 5.0) -> bytes | None:
        """The head that carried `x-test-id: test_id`."""
        deadline = time.monotonic() + timeout
        needle = re.compile(rb"^x-test-id: " + test_id.encode() + rb"$", re.I | re.M)
        while True:
            with self._lock:
                for h in self.heads:
                    if needle.search(h.replace(b"\r\n", b"\n")):
                        return h
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def stop(self) -> None:
        self._sock.close()


def raw_lines(head: bytes, name: str) -> list[bytes]:
    """Every value of header `name` in a raw request head, as bytes."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.encode():
            out.append(v.strip(b" \t"))
    return out


def raw_path(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0].split(b" ")[1]


def send_bytes(port: int, tls, path: bytes, headers: list[tuple[bytes, bytes]]):
    """One HTTP/1.1 GET written byte for byte (`http.client` encodes a path as ASCII and header
    values as Latin-1; here both are sent as given). Returns (status, JSON body or None)."""
    sock = tls.client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                            server_hostname="localhost")
    try:
        head = b"GET " + path + b" HTTP/1.1\r\nhost: localhost\r\n"
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
        sock.sendall(head)
        r = http.client.HTTPResponse(sock)
        r.begin()
        body = r.read()
        is_json = (r.getheader("content-type") or "").startswith("application/json")
        return r.status, (json.loads(body) if is_json else None), body
    finally:
        sock.close()


def obs_upgrade(tid: str, *protocol_lines: bytes) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in upgrade_headers(tid)] + [
        (b"sec-websocket-protocol", line) for line in protocol_lines]


@pytest.fixture(scope="module")
def raw_backend():
    b = RawBackend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def obs_gateway(workdir, raw_backend, tls, request):
    """Token rewrite on every path, a route that strips its prefix and one that does not, in
    front of the raw backend."""
    return start(workdir, "obs-text", json.dumps(OBS_TEXT_CONFIG), raw_backend, tls, request)


TOKEN = "wsgate-e2e-obs-text-token"
ENTRY = bearer_entry(TOKEN).encode()


@pytest.mark.parametrize(
    "case, headers",
    [
        ("a token entry and an obs-text entry on one line",
         lambda tid: obs_upgrade(tid, ENTRY + b", v4.channel.k8s.io, caf\xe9")),
        ("the token on one line, obs-text on another",
         lambda tid: obs_upgrade(tid, ENTRY + b", v4.channel.k8s.io", b"x\xff.example")),
    ],
)
def test_a_protocol_line_the_filter_must_rewrite_is_refused_if_not_utf8(obs_gateway, raw_backend, tls, case,
                                                                         headers):
    """Stripping the token entry would rejoin the other entries from their text, with U+FFFD in
    place of the client's bytes: the filter answers 400 `non_utf8_header` naming the header (not
    its value), counts it, and forwards nothing."""
    gw, tid = obs_gateway, new_id()
    before = gw.counters().get("wsgate_non_utf8_headers_total", 0)
    status, body, raw = send_bytes(gw.ports["tls"], tls, b"/api/v1/exec", headers(tid))
    assert (status, body and body["reason"], body and body.get("header")) == (
        400, "non_utf8_header", "sec-websocket-protocol"), (case, status, raw)
    assert TOKEN.encode() not in raw and b"caf" not in raw and REPLACEMENT not in raw, case
    assert raw_backend.find(tid, timeout=0.5) is None, f"{case}: forwarded"
    assert wait_for(lambda: gw.counters().get("wsgate_non_utf8_headers_total", 0) > before), case
    assert TOKEN not in gw.log()


@pytest.mark.parametrize(
    "case, headers, want",
    [
        ("obs-text entries and no token: only read",
         lambda tid: obs_upgrade(tid, b"v4.channel.k8s.io, caf\xe9", b"\xff\x80"),
         {"sec-websocket-protocol": [b"v4.channel.k8s.io, caf\xe9", b"\xff\x80"]}),
        ("the bare prefix beside obs-text: only read",
         lambda tid: obs_upgrade(tid, b"base64url.bearer.authorization.k8s.io., caf\xe9"),
         {"sec-websocket-protocol": [b"base64url.bearer.authorization.k8s.io., caf\xe9"]}),
        ("a token rewritten, obs-text in another header",
         lambda tid: obs_upgrade(tid, ENTRY + b", v4.channel.k8s.io") + [(b"x-junk", b"caf\xe9 \xff")],
         {"sec-websocket-protocol": [b"v4.channel.k8s.io"], "x-junk": [b"caf\xe9 \xff"],
          "authorization": [b"Bearer " + TOKEN.encode()]}),
        ("a U+FFFD the client really sent (UTF-8) is its own",
         lambda tid: obs_upgrade(tid, ENTRY + b", v4.channel.k8s.io, caf" + REPLACEMENT),
         {"sec-websocket-protocol": [b"v4.channel.k8s.io,caf" + REPLACEMENT]}),
    ],
)
def test_non_utf8_header_bytes_the_filter_only_reads_pass_byte_for_byte(obs_gateway, raw_backend, tls, case, headers,
                                                                         want):
    """The backend receives exactly the client's bytes, and never a U+FFFD the client did not
    send."""
    gw, tid = obs_gateway, new_id()
    sent = headers(tid)
    status, _, raw = send_bytes(gw.ports["tls"], tls, b"/api/v1/exec", sent)
    assert status == 200, (case, status, raw)
    head = raw_backend.find(tid)
    assert head is not None, case
    for name, values in want.items():
        assert raw_lines(head, name) == values, (case, name, raw_lines(head, name))
    client_sent = any(REPLACEMENT in v for _, v in sent)
    assert client_sent or REPLACEMENT not in head, case


def h2_get_bytes(port: int, tls, path: bytes, headers: list[tuple[bytes, bytes]]):
    """One HTTP/2 GET with byte headers, sent as given (no validation by the client library).
    Returns (status, JSON body or None, body)."""
    sock = tls.client_context(alpn=["h2"]).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                                       server_hostname="localhost")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False))
    try:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", path),
                                (b":authority", b"localhost"), *headers], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, ctype, body = 0, b"", b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before the stream ended")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    hdrs = dict(ev.headers)
                    status, ctype = int(hdrs[b":status"]), hdrs.get(b"content-type", b"")
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, (json.loads(body) if ctype.startswith(b"application/json") else None), body
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()


@pytest.mark.parametrize(
    "case, path, want",
    [
        # The query is not normalised: the stripped path would be rebuilt from its text.
        ("a stripPrefix route, obs-text in the query", b"/c/dev/x?q=caf\xe9", ("refused", ":path")),
        # Envoy's path normalisation percent-encodes the path part before the filter sees it.
        ("a stripPrefix route, obs-text in the path", b"/c/dev/caf\xe9/x", ("forwarded", b"/caf%E9/x")),
        ("a route that does not strip: routed, path as sent", b"/kubernetes-pod-ssh-proxy?cluster_name=prod&x=caf\xe9",
         ("forwarded", b"/kubernetes-pod-ssh-proxy?cluster_name=prod&x=caf\xe9")),
        ("no route matches", b"/elsewhere?q=caf\xe9", ("forwarded", b"/elsewhere?q=caf\xe9")),
    ],
)
def test_an_obs_text_path_is_never_forwarded_altered(obs_gateway, raw_backend, tls, case, path, want):
    """Over HTTP/2 (Envoy's HTTP/1 codec refuses obs-text anywhere in the request target with its
    own 400, before any filter): a path the filter would rewrite is refused with 400
    `non_utf8_header` naming `:path`; one it only reads reaches the backend as Envoy passed it,
    never with a U+FFFD the client did not send."""
    gw, tid = obs_gateway, new_id()
    before = gw.counters().get("wsgate_non_utf8_headers_total", 0)
    status, body, raw = h2_get_bytes(gw.ports["tls"], tls, path, [(b"x-test-id", tid.encode())])
    kind, value = want
    if kind == "refused":
        assert (status, body and body["reason"], body and body.get("header")) == (400, "non_utf8_header", value), (
            case, status, raw)
        assert b"caf" not in raw and REPLACEMENT not in raw, case
        assert raw_backend.find(tid, timeout=0.5) is None, f"{case}: forwarded"
        assert wait_for(lambda: gw.counters().get("wsgate_non_utf8_headers_total", 0) > before), case
    else:
        assert status == 200, (case, status, raw)
        head = raw_backend.find(tid)
        assert head is not None and raw_path(head) == value, (case, head and raw_path(head))
        assert REPLACEMENT not in head, case


def test_http1_obs_text_in_the_request_target_never_reaches_the_filter(obs_gateway, raw_backend, tls):
    """Why the path cases above use HTTP/2: Envoy's HTTP/1 codec answers obs-text in the request
    target itself (400, `DPE`), so neither the filter nor the backend sees it."""
    for path in [b"/c/dev/caf\xe9/x", b"/c/dev/x?q=caf\xe9"]:
        tid = new_id()
        status, body, raw = send_bytes(obs_gateway.ports["tls"], tls, path, [(b"x-test-id", tid.encode())])
        assert (status, body) == (400, None), (path, raw)
        assert raw_backend.find(tid, timeout=0.5) is None, path
