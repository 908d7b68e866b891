"""wsgate-sidecar with real components: the release binary, a throwaway OpenSSH `sshd` on
loopback, the real `ssh` client (through `testenv/tools/ws_stdio.py`, a small python
`websockets` stdio client), python `websockets` speaking SkyPilot's framing, and, for the last
test, the real Envoy with the filter in front.

Targets that misbehave on purpose (a connection reset mid-session, an endless flood) are small
Python TCP servers: sshd cannot be made to do either on demand.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from clients import bearer_entry, raw_request, upgrade_headers
from testbed.envoy import Gateway
from testbed.sidecar import ALICE, BOB, Sidecar, standard_args
from testbed.sshd import free_port

WS_STDIO = Path(__file__).resolve().parents[1] / "tools" / "ws_stdio.py"

@pytest.fixture(scope="module")
def sidecar(workdir, sshd, request):
    sc = Sidecar(workdir / "sidecar", standard_args(workdir, f"127.0.0.1:{sshd.port}")).start()
    yield sc
    sc.stop()
    if request.session.testsfailed:
        sys.stderr.write(f"\n===== sidecar log =====\n{sc.log()[-10000:]}\n")


def proxy(url: str, *extra: str) -> str:
    return " ".join(shlex.quote(x) for x in [sys.executable, str(WS_STDIO), url, *extra])


def sky_url(port: int, cluster: str = "prod", version: int | None = 62, scheme: str = "ws") -> str:
    url = f"{scheme}://127.0.0.1:{port}/kubernetes-pod-ssh-proxy?cluster_name={cluster}&worker=0"
    return url + (f"&client_version={version}" if version is not None else "")


def drain_until_closed(ws):
    """Reads until the server closes; returns the close frame it sent."""
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=10)
    return e.value.rcvd


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- Real ssh through the bridge ----------------------------------------------------------------


def test_ssh_runs_a_command_through_the_sidecar(sshd, sidecar):
    """The real ssh, SkyPilot framing (client_version 62), token in Authorization."""
    r = sshd.run(proxy(sky_url(sidecar.port), "--token", ALICE, "--typed"), "echo", "wsgate-ok")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"wsgate-ok\n"


def test_old_clients_use_raw_frames(sshd, sidecar):
    """No client_version (or ≤ 21): raw binary frames, no type byte."""
    for version in (None, 21):
        r = sshd.run(proxy(sky_url(sidecar.port, version=version), "--token", ALICE), "echo", "raw-ok")
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b"raw-ok\n"


def test_generic_path_endpoint(sshd, sidecar):
    url = f"ws://127.0.0.1:{sidecar.port}/ssh/dev?client_version=62"
    r = sshd.run(proxy(url, "--token", BOB, "--typed"), "echo", "path-ok")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"path-ok\n"


def test_100_mib_each_way_keeps_its_sha256(tmp_path, sshd, sidecar):
    """scp-like bulk copy both ways through the bridge; hashes must match."""
    src = tmp_path / "random.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    want = sha256_file(src)
    remote = tmp_path / "remote.bin"
    px = proxy(sky_url(sidecar.port), "--token", ALICE, "--typed")
    with open(src, "rb") as f:
        r = sshd.run(px, f"cat > {remote} && sha256sum {remote}", stdin=f)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.split()[0].decode() == want
    back = tmp_path / "back.bin"
    with open(back, "wb") as out:
        r = sshd.run(px, f"cat {src}", stdout=out)
    assert r.returncode == 0, r.stderr.decode()
    assert sha256_file(back) == want


# --- SkyPilot framing, by hand ------------------------------------------------------------------


def test_skypilot_framing_pings_echoed_latency_recorded(sidecar):
    before = sidecar.metric("wsgate_client_latency_seconds_count")
    with connect(sky_url(sidecar.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
        banner = ws.recv(timeout=10)
        assert banner[:1] == b"\x00" and banner[1:].startswith(b"SSH-2.0-")
        ping = struct.pack("!BI", 1, 77)
        ws.send(ping)
        assert ws.recv(timeout=10) == ping
        ws.send(struct.pack("!BQ", 2, 25))
        ws.send(struct.pack("!B", 9))
        closed = drain_until_closed(ws)
    assert (closed.code, closed.reason) == (1008, "unknown frame type 9")
    assert sidecar.metric("wsgate_client_latency_seconds_count") == before + 1


def test_endless_pings_neither_grow_memory_nor_stall_the_session(sidecar):
    """20 000 SkyPilot ping frames and 2 000 WebSocket pings as fast as the client can send
    them: every SkyPilot ping is echoed in order, the sidecar's RSS stays within a few MB, and
    the session still carries SSH bytes afterwards."""
    with connect(sky_url(sidecar.port), additional_headers={"Authorization": f"Bearer {ALICE}"},
                 open_timeout=10, max_queue=None) as ws:
        assert ws.recv(timeout=10)[:1] == b"\x00"
        rss0 = sidecar.rss_kib()
        for i in range(2000):
            ws.ping(struct.pack("!I", i))
        for i in range(20000):
            ws.send(struct.pack("!BI", 1, i))
        for i in range(20000):
            assert ws.recv(timeout=10) == struct.pack("!BI", 1, i)
        assert sidecar.rss_kib() - rss0 < 8 * 1024
        ws.send(b"\x00SSH-2.0-e2e\r\n")
        assert ws.recv(timeout=10)[:1] == b"\x00"


def test_subprotocol_token_works_without_a_gateway(sidecar):
    """No gateway in front: the Kubernetes subprotocol token is accepted (the core's parser)
    and another offered subprotocol is echoed."""
    with connect(
        sky_url(sidecar.port),
        subprotocols=[bearer_entry(ALICE), "v4.channel.k8s.io"],
        open_timeout=10,
    ) as ws:
        assert ws.subprotocol == "v4.channel.k8s.io"
        assert ws.recv(timeout=10).startswith(b"\x00SSH-2.0-")


# --- Refusals, before the upgrade ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path, token, status, reason",
    [
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod", None, 401, "missing_credentials"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod", "sky_wrong", 401, "invalid_credentials"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod", BOB, 403, "forbidden"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=staging", ALICE, 404, "unknown_cluster"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=10.0.0.1:22", ALICE, 400, "invalid_cluster"),
        ("/kubernetes-pod-ssh-proxy?worker=0", ALICE, 400, "missing_cluster"),
        ("/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=1", ALICE, 404, "unknown_worker"),
    ],
)
def test_refusals_are_plain_http_with_a_json_reason(sidecar, path, token, status, reason):
    before = sidecar.metric(f'wsgate_handshake_failures_total{{reason="{reason}"}}')
    headers = upgrade_headers("x")
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    r = raw_request(sidecar.port, path, headers)
    assert (r.status, r.json()["reason"]) == (status, reason)
    if token:
        assert token.encode() not in r.body
    assert sidecar.metric(f'wsgate_handshake_failures_total{{reason="{reason}"}}') == before + 1


SKY = "/kubernetes-pod-ssh-proxy?"


@pytest.mark.parametrize(
    "path, status, reason",
    [
        (SKY + "cluster_name=%2e%2e", 400, "invalid_cluster"),
        (SKY + "cluster_name=a.b", 400, "invalid_cluster"),
        (SKY + "cluster_name=", 400, "invalid_cluster"),
        (SKY + "cluster_name=prod%00", 400, "invalid_cluster"),
        (SKY + "cluster_name=prod%0d%0ax-admin:%20yes", 400, "invalid_cluster"),
        (SKY + "cluster_name=PROD", 400, "invalid_cluster"),
        (SKY + "cluster_name=" + "a" * 64, 400, "invalid_cluster"),
        (SKY + "cluster_name=prod&cluster_name=prod", 400, "bad_request"),
        (SKY + "cluster_name=prod&cluster_name=dev", 400, "bad_request"),
        (SKY + "cluster_name=%zz", 400, "bad_request"),
        (SKY + "cluster_name=prod&worker=4294967296", 400, "bad_request"),
        (SKY + "cluster_name=prod&worker=-1", 400, "bad_request"),
        (SKY + "cluster_name=prod&worker=0x1", 400, "bad_request"),
        ("/ssh/..", 400, "invalid_cluster"),
        ("/ssh/%2e%2e", 400, "invalid_cluster"),
        ("/ssh/a%2Fb", 400, "invalid_cluster"),
        ("/ssh/10.0.0.1:22", 400, "invalid_cluster"),
        ("/ssh/staging?cluster_name=prod", 404, "unknown_cluster"),
        ("/ssh/%ff", 400, None),
        ("/ssh//prod", 404, None),
        ("/ssh/prod/extra", 404, None),
    ],
)
def test_hostile_queries_and_paths_never_become_sessions(sidecar, path, status, reason):
    """The sidecar's own parsing (reached without a gateway in front): encoded dots and
    separators, control characters, repeats, numbers out of range, a path cluster with a
    query cluster beside it (the path's wins). Each: the documented answer with a valid token,
    no session, no echo of the token. `reason` None: refused by the router before our code
    (no JSON body)."""
    sessions = sidecar.metric("wsgate_sessions_total")
    headers = upgrade_headers("x") + [("Authorization", f"Bearer {ALICE}")]
    r = raw_request(sidecar.port, path, headers)
    assert r.status == status, (path, r)
    if reason:
        assert r.json()["reason"] == reason
    assert ALICE.encode() not in r.body
    assert sidecar.metric("wsgate_sessions_total") == sessions


def test_unauthenticated_flood_is_refused_and_leaves_nothing_behind(sidecar, sshd):
    """400 handshakes with wrong tokens from 16 threads: every one a 401 and none becomes a
    session (so none reaches sshd), a real session opened during the flood works, and the
    sidecar's fds come back."""
    before = sidecar.open_fds()
    failures_before = sidecar.metric('wsgate_handshake_failures_total{reason="invalid_credentials"}')
    sessions_before = sidecar.metric("wsgate_sessions_total")
    statuses: list[int] = []

    # Raw handshakes (a plain HTTP/1.1 client): python-websockets' sync client can lose a 401
    # that arrives together with the connection's close (it logs "stream ended" and waits out
    # its open timeout), which would blame the sidecar for the client's race.
    path = "/" + sky_url(sidecar.port).split("/", 3)[3]

    def flood() -> None:
        for _ in range(25):
            r = raw_request(sidecar.port, path, upgrade_headers("flood") + [("Authorization", "Bearer sky_nope")])
            statuses.append(r.status)

    threads = [threading.Thread(target=flood) for _ in range(16)]
    for t in threads:
        t.start()
    with connect(sky_url(sidecar.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
        assert ws.recv(timeout=10).startswith(b"\x00SSH-2.0-")
    for t in threads:
        t.join(60)
    assert statuses == [401] * 400
    assert sidecar.metric("wsgate_sessions_total") - sessions_before == 1
    assert sidecar.metric('wsgate_handshake_failures_total{reason="invalid_credentials"}') - failures_before == 400
    assert sidecar.wait_open_fds(before) <= before


def test_target_down_is_502_before_the_upgrade(workdir):
    closed = free_port()
    with Sidecar(workdir / "down", standard_args(workdir, f"127.0.0.1:{closed}")) as sc:
        r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                        upgrade_headers("x") + [("Authorization", f"Bearer {ALICE}")])
        assert (r.status, r.json()["reason"]) == (502, "target_unreachable")


# --- Sessions, limits, faults -------------------------------------------------------------------


def test_oversized_frame_closes_1009(workdir, sshd):
    """A frame past --max-frame-size ends the session with 1009 and an audit line; nothing of
    it reaches the target."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--max-frame-size", "1024")
    with Sidecar(workdir / "big", args) as sc:
        with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"},
                     open_timeout=10, max_size=None) as ws:
            ws.recv(timeout=10)
            ws.send(b"\x00" + b"x" * 5000)
            assert drain_until_closed(ws).code == 1009
        (end,) = sc.wait_audit("session_end")
        assert end["close_reason"] == "frame_too_big" and end["bytes_up"] == 0



def test_slowloris_heads_are_cut_and_their_fds_freed(workdir, sshd):
    """Connections that trickle a request head (or send nothing) are closed after
    --header-read-timeout, and the sidecar's open fds return to where they were; a real session
    opened meanwhile is unaffected, also past the timeout."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--header-read-timeout", "1s")
    with Sidecar(workdir / "slowloris", args) as sc:
        before = sc.open_fds()
        with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"},
                     open_timeout=10) as ws:
            ws.recv(timeout=10)  # sshd's banner
            slow = []
            for i in range(20):
                s = socket.create_connection(("127.0.0.1", sc.port))
                if i % 2:
                    s.sendall(b"GET /ssh/prod HTTP/1.1\r\nHost: x\r\n")  # never the blank line
                slow.append(s)
            time.sleep(0.3)
            assert sc.open_fds() >= before + 20
            t0 = time.monotonic()
            for s in slow:
                s.settimeout(5)
                try:
                    while s.recv(1024):
                        pass
                except ConnectionResetError:
                    pass
                s.close()
            assert time.monotonic() - t0 < 4
            time.sleep(0.2)
            # The session, older than the head timeout by now, still carries bytes.
            ws.send(b"\x00SSH-2.0-bench\r\n")
            ws.recv(timeout=10)
        assert sc.wait_open_fds(before) <= before


def test_sessions_listing_and_metrics(sidecar):
    with connect(sky_url(sidecar.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
        ws.recv(timeout=10)
        status, body = sidecar.admin("/sessions")
        listing = json.loads(body)
        mine = [s for s in listing if s["user"] == "alice" and s["cluster"] == "prod"]
        assert status == 200 and mine
        assert mine[0]["target"].startswith("127.0.0.1:") and mine[0]["bytes_down"] > 0
        assert sidecar.metric("wsgate_sessions_open") >= 1
    text = sidecar.admin("/metrics")[1]
    assert "wsgate_sessions_total" in text and "wsgate_bytes_down_total" in text


class FaultyTarget:
    """A TCP target that sends an SSH-like banner, then either resets the connection on the
    first bytes it receives, or floods forever."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"SSH-2.0-faulty\r\n")
            if self.mode == "reset":
                conn.recv(1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            chunk = b"\x00" * 65536
            while not self.stop.is_set():
                conn.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_target_dying_mid_session_closes_1011_with_an_audit_line(workdir):
    target = FaultyTarget("reset")
    try:
        with Sidecar(workdir / "reset", standard_args(workdir, f"127.0.0.1:{target.port}")) as sc:
            with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
                assert ws.recv(timeout=10) == b"\x00SSH-2.0-faulty\r\n"
                ws.send(b"\x00hello")
                assert drain_until_closed(ws).code == 1011
            (end,) = sc.wait_audit("session_end")
            assert end["close_code"] == 1011 and end["close_reason"] == "target_error"
            assert end["user"] == "alice" and end["cluster"] == "prod" and end["bytes_up"] == 5
            assert ALICE not in sc.log()
    finally:
        target.close()


def test_a_client_that_never_reads_cannot_grow_memory(workdir):
    """A target floods, the client never reads: the bridge stops reading the target when the
    client's socket is full, so the sidecar's RSS stays flat."""
    target = FaultyTarget("flood")
    try:
        with Sidecar(workdir / "flood", standard_args(workdir, f"127.0.0.1:{target.port}")) as sc:
            base = sc.rss_kib()
            s = socket.create_connection(("127.0.0.1", sc.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            req = (
                "GET /kubernetes-pod-ssh-proxy?cluster_name=prod&client_version=62 HTTP/1.1\r\n"
                f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {ALICE}\r\n\r\n"
            )
            s.sendall(req.encode())
            assert s.recv(12) == b"HTTP/1.1 101"
            time.sleep(3)  # the flood runs; nobody reads
            grown = sc.rss_kib() - base
            listing = json.loads(sc.admin("/sessions")[1])
            s.close()
            assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
            assert listing and listing[0]["bytes_down"] < 16 << 20
    finally:
        target.close()


def test_session_limits_per_user_and_overall(workdir, sshd):
    # The limits come from a config file (WSGATE_* lines), the rest from flags.
    cfg = workdir / "limits.env"
    cfg.write_text("# limits\nWSGATE_MAX_SESSIONS=2\nWSGATE_MAX_SESSIONS_PER_USER=1\n")
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--config", str(cfg))
    with Sidecar(workdir / "limits", args) as sc:
        def open_as(token: str, cluster: str):
            return connect(sky_url(sc.port, cluster), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)

        with open_as(ALICE, "prod") as first:
            first.recv(timeout=10)
            with pytest.raises(InvalidStatus) as e:
                open_as(ALICE, "prod")
            assert e.value.response.status_code == 429
            with open_as(BOB, "dev") as second:
                second.recv(timeout=10)
                # Overall limit (2) reached: anyone gets 503.
                r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=dev",
                                upgrade_headers("x") + [("Authorization", f"Bearer {BOB}")])
                assert (r.status, r.json()["reason"]) in {(503, "global_limit"), (429, "user_limit")}
                r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                                upgrade_headers("x") + [("Authorization", f"Bearer {ALICE}")])
                assert r.status in (429, 503)
        # Slots come back when sessions end.
        time.sleep(0.3)
        with open_as(ALICE, "prod") as again:
            assert again.recv(timeout=10).startswith(b"\x00SSH-2.0-")


def test_sigterm_drains_then_closes_with_1001(workdir, sshd):
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--shutdown-grace", "2s")
    sc = Sidecar(workdir / "drain", args).start()
    try:
        with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
            ws.recv(timeout=10)
            sc.terminate()
            time.sleep(0.5)
            assert sc.admin("/readyz")[0] == 503
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", sc.port), timeout=2).close()
            # The open session still works during the grace period...
            ping = struct.pack("!BI", 1, 5)
            ws.send(ping)
            assert ws.recv(timeout=5) == ping
            # ...and is closed with 1001 when it is over.
            assert drain_until_closed(ws).code == 1001
        assert sc.proc.wait(10) == 0
        (end,) = sc.audit("session_end")
        assert end["close_reason"] == "shutdown"
    finally:
        sc.stop()


# --- Through the gateway ------------------------------------------------------------------------


def test_ssh_through_envoy_filter_and_sidecar(workdir, tls, sshd, sidecar):
    """client → Envoy with the filter (token in the subprotocol, routed by cluster) → sidecar
    → sshd. The sidecar authenticates the Authorization header the filter produced."""
    config = {
        "routes": [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
                    "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]}],
    }
    with Gateway(workdir / "gw-sidecar", json.dumps(config), sidecar.port, tls) as gw:
        url = sky_url(gw.ports["tls"], scheme="wss").replace("127.0.0.1", "localhost")
        px = proxy(url, "--subprotocol-token", ALICE, "--cafile", str(tls.ca_pem), "--typed")
        r = sshd.run(px, "echo", "through-envoy")
        assert r.returncode == 0, r.stderr.decode() + gw.log()[-3000:]
        assert r.stdout == b"through-envoy\n"
        assert ALICE not in gw.log()
    ends = [e for e in sidecar.audit("session_end") if e["user"] == "alice"]
    assert ends


# --- Central mode -------------------------------------------------------------------------------


def test_central_mode_with_token_review_sar_and_pod_lookup(workdir, sshd):
    """The real binary in central mode, against a scripted API server (no cluster can run
    here): TokenReview authenticates, SubjectAccessReview authorizes per cluster, the pod list
    picks the head for worker 0; real ssh reaches sshd through it. An API outage fails closed."""
    from testbed.kubeapi import KubeApiStub, pod

    api = KubeApiStub(
        tokens={"k8s-token-alice": ("alice", ["sre"]), "k8s-token-bob": ("bob", [])},
        allowed={("alice", "prod")},
        pods={"skypilot-cluster-name=prod": [pod("prod-worker1", "127.0.0.9", head=False),
                                            pod("prod-head", "127.0.0.1", head=True)]},
    )
    try:
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig", "skypilot")
        args = [
            "--kube-selector", "skypilot-cluster-name={cluster}",
            "--kube-port", str(sshd.port),
            "--auth", "token-review",
            "--authz-sar",
            "--log-format", "json",
        ]
        sc = Sidecar(workdir / "central", args, env={"KUBECONFIG": str(kubeconfig)})
        with sc:
            r = sshd.run(proxy(sky_url(sc.port), "--token", "k8s-token-alice", "--typed"), "echo", "central-ok")
            assert r.returncode == 0, r.stderr.decode() + sc.log()[-3000:]
            assert r.stdout == b"central-ok\n"
            posts = {p: b for m, p, b in api.requests if m == "POST"}
            sar = posts["/apis/authorization.k8s.io/v1/subjectaccessreviews"]["spec"]
            assert sar["user"] == "alice" and sar["resourceAttributes"]["name"] == "prod"
            gets = [p for m, p, _ in api.requests if m == "GET"]
            assert gets and gets[0].startswith("/api/v1/namespaces/skypilot/pods?")

            def refusal(token: str, cluster: str = "prod") -> tuple[int, str]:
                r = raw_request(sc.port, f"/kubernetes-pod-ssh-proxy?cluster_name={cluster}",
                                upgrade_headers("x") + [("Authorization", f"Bearer {token}")])
                return r.status, r.json()["reason"]

            assert refusal("k8s-token-bob") == (403, "forbidden")
            assert refusal("not-a-token") == (401, "invalid_credentials")
            api.allowed.add(("alice", "dev"))
            assert refusal("k8s-token-alice", "dev") == (404, "unknown_cluster")
            api.failing = True
            assert refusal("another-token") == (503, "auth_unavailable")
            assert "k8s-token-alice" not in sc.log()
    finally:
        api.close()
