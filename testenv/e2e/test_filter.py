"""The wsgate filter inside a real Envoy (the Istio-like bootstrap in testbed/envoy.py).

Each test names the behaviour it pins. Clients: python `websockets` and `websocket-client`
(real WebSocket clients), `http.client` for hand-built requests, `h2` for HTTP/2 WebSockets.
The backend is a real `websockets` server that records what reached it.
"""
from __future__ import annotations

import json
import secrets
import time
import uuid

import pytest
import websocket  # websocket-client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from clients import bearer_entry, h2_websocket, raw_request, upgrade_headers
from testbed.envoy import EnvoyExited, Gateway

# Every token a test sends; the last test checks none of them reached a log.
USED_TOKENS: list[str] = []


def new_token() -> str:
    t = "wsgate-e2e-" + secrets.token_urlsafe(18)
    USED_TOKENS.append(t)
    return t


def new_id() -> str:
    return uuid.uuid4().hex


def header(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k == name]


class Counters:
    """Reads the filter's counters before and after an action."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.before = gw.counters()

    def delta(self, name: str) -> int:
        # Envoy flushes custom stats from workers on its stats interval; poll briefly.
        deadline = time.monotonic() + 6
        while True:
            d = self.gw.counters().get(name, 0) - self.before.get(name, 0)
            if d > 0 or time.monotonic() > deadline:
                return d
            time.sleep(0.1)


def reason_counter(family: str, reason: str) -> str:
    """A per-reason counter's stat name (after `wasmcustom.`): the reason is embedded as
    `reason=.=<reason>;.;` before `total`, so Envoy can report it as a `reason` label
    (docs/filter-metrics.md); `family` is the name without `_total`."""
    return f"{family}_reason=.={reason};.;total"


def wss(gw: Gateway, path: str) -> str:
    return f"wss://localhost:{gw.ports['tls']}{path}"


# --- Token rewrite -------------------------------------------------------------------------


def test_subprotocol_token_becomes_authorization(gateway, backend, tls):
    """Headlamp-style client over wss: the backend sees `Authorization: Bearer` and only the
    real subprotocol; the handshake and an echo still work end to end."""
    tok, tid = new_token(), new_id()
    c = Counters(gateway)
    with connect(
        wss(gateway, "/api/v1/namespaces/default/pods/p/exec?command=sh"),
        ssl=tls.client_context(),
        subprotocols=[bearer_entry(tok), "v5.channel.k8s.io"],
        additional_headers={"x-test-id": tid},
        compression=None,
        open_timeout=10,
    ) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
    rec = backend.find(tid)
    assert rec is not None
    assert header(rec, "authorization") == [f"Bearer {tok}"]
    assert header(rec, "sec-websocket-protocol") == ["v5.channel.k8s.io"]
    assert c.delta("wsgate_tokens_rewritten_total") == 1


def test_token_on_its_own_line_with_websocket_client(gateway, backend, tls):
    """websocket-client, token and protocols on separate `Sec-WebSocket-Protocol` lines: every
    line is scanned and the remaining entries are joined on one line."""
    tok, tid = new_token(), new_id()
    ws = websocket.create_connection(
        wss(gateway, "/api/v1/watch"),
        header=[
            f"x-test-id: {tid}",
            f"Sec-WebSocket-Protocol: {bearer_entry(tok)}",
            "Sec-WebSocket-Protocol: v4.channel.k8s.io, channel.k8s.io",
        ],
        sslopt={"ca_certs": str(tls.ca_pem)},
        timeout=10,
    )
    try:
        ws.send("x")
        assert ws.recv() == "x"
    finally:
        ws.close()
    rec = backend.find(tid)
    assert header(rec, "authorization") == [f"Bearer {tok}"]
    assert header(rec, "sec-websocket-protocol") == ["v4.channel.k8s.io,channel.k8s.io"]


@pytest.mark.parametrize(
    "case, protocol_lines, extra, reason",
    [
        ("token alone", lambda t: [bearer_entry(t)], [], "missing_subprotocol"),
        ("two tokens", lambda t: [f"{bearer_entry(t)}, v4.channel.k8s.io", bearer_entry(t + "x")], [], "multiple_tokens"),
        ("padded base64", lambda t: [f"{bearer_entry(t)}==, v4.channel.k8s.io"], [], "invalid_encoding"),
        ("CRLF injection", lambda t: [f"{bearer_entry(t + chr(13) + chr(10) + 'x-admin: yes')}, v4.channel.k8s.io"], [], "control_characters"),
        ("not UTF-8", lambda t: [f"{bearer_entry(t.encode() + bytes([0xff]))}, v4.channel.k8s.io"], [], "invalid_utf8"),
        ("Authorization already present", lambda t: [f"{bearer_entry(t)}, v4.channel.k8s.io"], [("Authorization", "Bearer someone-else")], "authorization_conflict"),
    ],
)
def test_token_errors_are_answered_by_the_filter(gateway, backend, tls, case, protocol_lines, extra, reason):
    """Each Kubernetes rule violation: a 400 with a JSON reason from the filter, the backend
    never sees the request, and the token is not echoed."""
    tok, tid = new_token(), new_id()
    c = Counters(gateway)
    r = raw_request(
        gateway.ports["tls"],
        "/api/v1/exec",
        upgrade_headers(tid, *protocol_lines(tok)) + extra,
        tls_context=tls.client_context(),
    )
    assert r.status == 400, (case, r)
    assert r.json()["reason"] == reason
    assert tok.encode() not in r.body
    assert backend.find(tid, timeout=0.5) is None, "the request reached the backend"
    counter = (
        "wsgate_authorization_conflicts_total"
        if reason == "authorization_conflict"
        else reason_counter("wsgate_token_errors", reason)
    )
    assert c.delta(counter) == 1


def test_bare_prefix_passes_unchanged(gateway, backend, tls):
    """The empty token is not an error: the request is forwarded untouched."""
    tid = new_id()
    line = "base64url.bearer.authorization.k8s.io., v4.channel.k8s.io"
    r = raw_request(gateway.ports["tls"], "/x", upgrade_headers(tid, line), tls_context=tls.client_context())
    assert r.status == 101
    rec = backend.find(tid)
    assert header(rec, "sec-websocket-protocol") == [line]
    assert header(rec, "authorization") == []


# --- Hostile input ---------------------------------------------------------------------------


def test_dozens_of_protocol_lines_and_a_long_entry(gateway, backend, tls):
    """40 `Sec-WebSocket-Protocol` lines, one of them a 6 KB entry, the token on line 20: every
    line is scanned, the token is rewritten, nothing else is lost or reordered."""
    tok, tid = new_token(), new_id()
    others = [f"p{i}.example" for i in range(40)]
    others[7] = "x" * 6000
    lines = others[:20] + [bearer_entry(tok)] + others[20:]
    r = raw_request(gateway.ports["tls"], "/many", upgrade_headers(tid, *lines), tls_context=tls.client_context())
    assert r.status == 101
    rec = backend.find(tid)
    assert header(rec, "authorization") == [f"Bearer {tok}"]
    assert header(rec, "sec-websocket-protocol") == [",".join(others)]


@pytest.mark.parametrize(
    "case, make_lines, extra, status, reason",
    [
        ("NUL after decoding", lambda t: [f"{bearer_entry(t + chr(0))}, v4.channel.k8s.io"], [], 400, "control_characters"),
        ("LF after decoding", lambda t: [f"{bearer_entry(chr(10) + t)}, v4.channel.k8s.io"], [], 400, "control_characters"),
        ("Authorization twice", lambda t: [f"{bearer_entry(t)}, v4.channel.k8s.io"],
         [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], 400, "authorization_conflict"),
        ("token in two lines' entries", lambda t: [f"v4.channel.k8s.io, {bearer_entry(t)}", f"{bearer_entry(t)}"], [], 400, "multiple_tokens"),
    ],
)
def test_hostile_token_inputs(gateway, backend, tls, case, make_lines, extra, status, reason):
    """The documented answer; the request never reaches the backend; the token is not echoed."""
    tok, tid = new_token(), new_id()
    r = raw_request(gateway.ports["tls"], "/api/v1/exec", upgrade_headers(tid, *make_lines(tok)) + extra,
                    tls_context=tls.client_context())
    assert (r.status, r.json()["reason"]) == (status, reason), case
    assert tok.encode() not in r.body and not any(tok in v for v in r.headers.values())
    assert backend.find(tid, timeout=0.5) is None


def test_mixed_case_prefix_is_not_a_token(gateway, backend, tls):
    """The apiserver's prefix match is case-sensitive: `Base64url.Bearer…` is an ordinary
    subprotocol, forwarded as sent, and no Authorization is made from it."""
    tok, tid = new_token(), new_id()
    entry = bearer_entry(tok).replace("base64url.bearer", "Base64url.Bearer")
    r = raw_request(gateway.ports["tls"], "/x", upgrade_headers(tid, f"{entry}, v4.channel.k8s.io"),
                    tls_context=tls.client_context())
    assert r.status == 101
    rec = backend.find(tid)
    assert header(rec, "authorization") == []
    assert header(rec, "sec-websocket-protocol") == [f"{entry}, v4.channel.k8s.io"]


@pytest.mark.parametrize(
    "path, status, reason",
    [
        ("/kubernetes-pod-ssh-proxy?cluster_name=a%2Fb", 400, "invalid_cluster"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod%00", 400, "invalid_cluster"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=PROD", 400, "invalid_cluster"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod&cluster_name=prod", 400, "ambiguous_cluster"),
    ],
)
def test_hostile_cluster_names(gateway, backend, tls, path, status, reason):
    """Encoded separators, NUL, upper case and repeats: refused by the filter, never forwarded."""
    tid = new_id()
    r = raw_request(gateway.ports["tls"], path, upgrade_headers(tid), tls_context=tls.client_context())
    assert (r.status, r.json()["reason"]) == (status, reason)
    assert backend.find(tid, timeout=0.5) is None


def test_dot_segments_cannot_escape_the_routing_pattern(gateway, backend, tls):
    """Envoy normalises `..` and `//` before the filter sees the path (Istio's default), so
    `/c/../c/dev//api` is routed as `/c/dev/api`: the cluster is the validated `dev`, and the
    backend never sees a client-chosen routing header."""
    tid = new_id()
    r = raw_request(gateway.ports["tls"], "/c/../c/dev//api", upgrade_headers(tid) + [("x-wsgate-cluster", "prod")],
                    tls_context=tls.client_context())
    assert r.status == 101
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == ["dev"]


# --- Redirect guard --------------------------------------------------------------------------


def test_plaintext_upgrade_gets_426_naming_the_wss_url(gateway, backend):
    """`ws://` into the httpsRedirect port: instead of Envoy's useless 301, the client gets a
    426 naming the `wss://` URL, which then works."""
    tid = new_id()
    c = Counters(gateway)
    path = "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62"
    with pytest.raises(InvalidStatus) as e:
        connect(
            f"ws://127.0.0.1:{gateway.ports['plaintext']}{path}",
            additional_headers={"x-test-id": tid},
            open_timeout=10,
        )
    resp = e.value.response
    want = f"wss://127.0.0.1:{gateway.ports['tls']}{path}"
    assert resp.status_code == 426
    assert resp.headers["x-wsgate-websocket-url"] == want
    body = json.loads(resp.body)
    assert body["reason"] == "upgrade_redirected" and body["url"] == want
    assert want in body["error"]
    assert backend.find(tid, timeout=0.5) is None
    assert c.delta("wsgate_redirects_guarded_total") == 1


def test_the_426_hint_is_usable(gateway, tls):
    """Following the hint by hand (what `wsgate proxy` and users do) reaches the backend."""
    with pytest.raises(InvalidStatus) as e:
        connect(f"ws://127.0.0.1:{gateway.ports['plaintext']}/hint", open_timeout=10)
    url = e.value.response.headers["x-wsgate-websocket-url"].replace("127.0.0.1", "localhost")
    with connect(url, ssl=tls.client_context(), open_timeout=10) as ws:
        ws.send("ok")
        assert ws.recv(timeout=10) == "ok"


def test_plain_get_keeps_its_301(gateway):
    """Browsers follow redirects: a plain GET on the plaintext port keeps Envoy's 301."""
    r = raw_request(gateway.ports["plaintext"], "/dashboard/", [("Host", "gw.example.com")])
    assert r.status == 301
    assert r.headers["location"] == "https://gw.example.com/dashboard/"


def test_spdy_upgrade_is_guarded_with_an_https_hint(gateway):
    """kubectl's SPDY fallback gets the same clear answer, with an https:// URL."""
    r = raw_request(
        gateway.ports["plaintext"],
        "/api/v1/namespaces/default/pods/p/exec",
        [("Upgrade", "SPDY/3.1"), ("Connection", "Upgrade"), ("Host", "gw.example.com")],
    )
    assert r.status == 426
    assert r.headers["x-wsgate-websocket-url"] == (
        f"https://gw.example.com:{gateway.ports['tls']}/api/v1/namespaces/default/pods/p/exec"
    )


def test_upstream_redirect_of_an_upgrade_is_guarded(gateway, tls):
    """An app behind the gateway that redirects an upgrade: 426 with the target as wss://;
    the same app's redirect of a plain GET is untouched."""
    with pytest.raises(InvalidStatus) as e:
        connect(wss(gateway, "/redirect/ws"), ssl=tls.client_context(), open_timeout=10)
    assert e.value.response.status_code == 426
    assert e.value.response.headers["x-wsgate-websocket-url"] == "wss://moved.example.com/new-home"
    r = raw_request(gateway.ports["tls"], "/redirect/page", [], tls_context=tls.client_context())
    assert r.status == 301
    assert r.headers["location"] == "https://moved.example.com/new-home"


@pytest.mark.parametrize(
    "source, path, allowed",
    [
        ("127.0.0.2", "/plain-ok/session", True),
        ("127.0.0.1", "/plain-ok/session", False),  # not a trusted source
        ("127.0.0.2", "/elsewhere", False),  # not a configured path
    ],
)
def test_plaintext_upgrade_allowed_only_from_trusted_cidr_on_configured_path(gateway, backend, source, path, allowed):
    """The opt-in allowance: `x-forwarded-proto` becomes https and the route cache is cleared,
    so the upgrade reaches its route instead of the 301, and only when both conditions hold."""
    tid = new_id()
    c = Counters(gateway)
    url = f"ws://127.0.0.1:{gateway.ports['plaintext']}{path}"
    if allowed:
        with connect(url, additional_headers={"x-test-id": tid}, source_address=(source, 0), open_timeout=10) as ws:
            ws.send("plain")
            assert ws.recv(timeout=10) == "plain"
        rec = backend.find(tid)
        assert header(rec, "x-forwarded-proto") == ["https"]
        assert c.delta("wsgate_plaintext_allowed_total") == 1
    else:
        with pytest.raises(InvalidStatus) as e:
            connect(url, additional_headers={"x-test-id": tid}, source_address=(source, 0), open_timeout=10)
        assert e.value.response.status_code == 426
        assert backend.find(tid, timeout=0.5) is None


# --- Routing ---------------------------------------------------------------------------------


def test_skypilot_request_is_routed_by_query(gateway, backend, tls):
    """SkyPilot's URL: the cluster goes into `x-wsgate-cluster` and, with the route cache
    cleared, the header-matching route (the VirtualService's) is the one taken."""
    tid = new_id()
    c = Counters(gateway)
    path = "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62"
    with connect(wss(gateway, path), ssl=tls.client_context(), additional_headers={"x-test-id": tid}, open_timeout=10) as ws:
        ws.send(b"\x00ssh bytes")
        assert ws.recv(timeout=10) == b"\x00ssh bytes"
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == ["prod"]
    assert header(rec, "x-testbed-route") == ["cluster-route"]
    assert rec["path"] == path
    assert c.delta("wsgate_routed_total") == 1


def test_path_pattern_routes_strips_and_drops_browser_headers(gateway, backend, tls):
    """`/c/{cluster}/...`: cluster from the path, prefix stripped, `User-Agent`/`Origin`
    removed for backends that reject browser-like upgrades."""
    tid = new_id()
    r = raw_request(
        gateway.ports["tls"],
        "/c/dev/api/v1/pods?watch=1",
        [("x-test-id", tid), ("User-Agent", "Mozilla/5.0"), ("Origin", "https://ui.example.com")],
        tls_context=tls.client_context(),
    )
    assert r.status == 200
    rec = backend.find(tid)
    assert rec["path"] == "/api/v1/pods?watch=1"
    assert header(rec, "x-wsgate-cluster") == ["dev"]
    assert header(rec, "x-testbed-route") == ["cluster-route"]
    assert header(rec, "user-agent") == [] and header(rec, "origin") == []


@pytest.mark.parametrize(
    "query, status, reason",
    [
        ("cluster_name=10.0.0.1:22", 400, "invalid_cluster"),
        ("cluster_name=%2e%2e", 400, "invalid_cluster"),
        ("cluster_name=a.b", 400, "invalid_cluster"),
        ("cluster_name=", 400, "invalid_cluster"),
        ("cluster_name=prod&cluster_name=dev", 400, "ambiguous_cluster"),
        ("worker=0", 400, "missing_cluster"),
        ("cluster_name=staging", 404, "unknown_cluster"),
    ],
)
def test_bad_cluster_names_are_refused(gateway, backend, tls, query, status, reason):
    """Anything but an allowed RFC 1123 label is answered by the filter and never forwarded."""
    tid = new_id()
    c = Counters(gateway)
    r = raw_request(
        gateway.ports["tls"],
        f"/kubernetes-pod-ssh-proxy?{query}",
        upgrade_headers(tid),
        tls_context=tls.client_context(),
    )
    assert (r.status, r.json()["reason"]) == (status, reason)
    assert backend.find(tid, timeout=0.5) is None
    assert c.delta(reason_counter("wsgate_route_rejections", reason)) == 1


def test_client_cannot_forge_the_routing_header(gateway, backend, tls):
    """A client-sent `x-wsgate-cluster` is removed: the backend never sees it and the
    cluster route is not taken."""
    tid = new_id()
    r = raw_request(
        gateway.ports["tls"], "/elsewhere", [("x-test-id", tid), ("x-wsgate-cluster", "prod")],
        tls_context=tls.client_context(),
    )
    assert r.status == 200
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == []
    assert header(rec, "x-testbed-route") == ["default"]


# --- HTTP/2 ----------------------------------------------------------------------------------


def test_h2_websocket_gets_a_key_and_reaches_a_strict_backend(gateway, backend, tls):
    """RFC 8441 over the TLS listener: no `Sec-WebSocket-Key` from the client, one added by the
    filter, so the strict HTTP/1.1 backend accepts (upstream istio/istio#33534); the token is rewritten
    on HTTP/2 too."""
    tok, tid = new_token(), new_id()
    c = Counters(gateway)
    res = h2_websocket(
        gateway.ports["tls"],
        tls.client_context(alpn=["h2"]),
        "/api/v1/exec",
        [("x-test-id", tid), ("sec-websocket-protocol", f"{bearer_entry(tok)}, v4.channel.k8s.io")],
    )
    assert res.status == 200, res
    assert res.echoed == b"hello over h2"
    rec = backend.find(tid)
    keys = header(rec, "sec-websocket-key")
    assert len(keys) == 1 and len(keys[0]) == 24 and keys[0].endswith("==")
    assert header(rec, "authorization") == [f"Bearer {tok}"]
    assert c.delta("wsgate_h2_keys_added_total") == 1


H2_PROTOCOL = "sec-websocket-protocol"


@pytest.mark.parametrize(
    "case, path, make_extra, status, reason",
    [
        ("NUL after decoding", "/api/v1/exec",
         lambda t: [(H2_PROTOCOL, f"{bearer_entry(t + chr(0))}, v4.channel.k8s.io")], 400, "control_characters"),
        ("two tokens", "/api/v1/exec",
         lambda t: [(H2_PROTOCOL, f"{bearer_entry(t)}, {bearer_entry(t + 'x')}, v4.channel.k8s.io")], 400, "multiple_tokens"),
        ("Authorization already present", "/api/v1/exec",
         lambda t: [(H2_PROTOCOL, f"{bearer_entry(t)}, v4.channel.k8s.io"), ("authorization", "Bearer someone-else")],
         400, "authorization_conflict"),
        ("encoded dots as the cluster", "/kubernetes-pod-ssh-proxy?cluster_name=%2e%2e", lambda t: [], 400, "invalid_cluster"),
        ("host:port as the cluster", "/kubernetes-pod-ssh-proxy?cluster_name=10.0.0.1:22", lambda t: [], 400, "invalid_cluster"),
        ("the cluster twice", "/kubernetes-pod-ssh-proxy?cluster_name=prod&cluster_name=dev", lambda t: [], 400, "ambiguous_cluster"),
    ],
)
def test_hostile_input_over_h2_gets_the_same_answers(gateway, backend, tls, case, path, make_extra, status, reason):
    """RFC 8441 upgrades carry the same headers in another shape: each hostile case gets the
    HTTP/1.1 answer, the backend never sees the request, and the token is not echoed."""
    tok, tid = new_token(), new_id()
    res = h2_websocket(gateway.ports["tls"], tls.client_context(alpn=["h2"]), path,
                       [("x-test-id", tid), *make_extra(tok)])
    assert (res.status, res.json()["reason"]) == (status, reason), case
    assert tok.encode() not in res.body and not any(tok in v for v in res.headers.values())
    assert backend.find(tid, timeout=0.5) is None


def test_h2_client_cannot_forge_the_routing_header(gateway, backend, tls):
    """Over HTTP/2 too, the cluster the backend sees is the validated one from the query."""
    tid = new_id()
    res = h2_websocket(gateway.ports["tls"], tls.client_context(alpn=["h2"]),
                       "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0",
                       [("x-test-id", tid), ("x-wsgate-cluster", "dev")])
    assert res.status == 200, res
    rec = backend.find(tid)
    assert header(rec, "x-wsgate-cluster") == ["prod"]
    assert header(rec, "x-testbed-route") == ["cluster-route"]


# --- Configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, field",
    [
        ('{"tokenRewrite": {"enable": true}}', "tokenRewrite.enable"),
        ('{"routes": [{"prefix": "/kubernetes-pod-ssh-proxy"}]}', "routes[0].clusterQueryParam"),
        ('{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["10.0.0.1/8"], "pathPrefixes": ["/"]}}}',
         "redirectGuard.allowPlaintext.trustedCidrs[0]"),
    ],
)
def test_bad_config_is_refused_with_the_field_named(workdir, backend, tls, config, field):
    """A bad `pluginConfig` fails `on_configure`: a static bootstrap exits at start, with one
    log line naming the field."""
    gw = Gateway(workdir / f"bad-{uuid.uuid4().hex[:8]}", config, backend.port, tls)
    with pytest.raises(EnvoyExited) as e:
        gw.start()
    lines = [l for l in e.value.log.splitlines() if "invalid pluginConfig" in l]
    assert lines and field in lines[0], e.value.log[-3000:]


def test_start_up_logs_version_and_config_summary(gateway):
    log = gateway.log()
    assert "wsgate-filter 0.1.0 (" in log
    assert "config loaded: token rewrite: all paths" in log
    assert "routes: [\"skypilot-ssh\", \"ui\"]" in log


def test_no_token_reached_any_log(gateway):
    """Runs last: no token any test sent appears in Envoy's log (debug level for wasm)."""
    assert USED_TOKENS, "no token was used: the suite did not run"
    log = gateway.log()
    leaked = [t for t in USED_TOKENS if t in log]
    assert not leaked
