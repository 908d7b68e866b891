"""The sidecar against hostile or stuck peers, with the real binary: limits that hold whatever
either socket does, nothing revealed before authentication, and an audit trail that says who,
from where and why, in JSON a strict parser accepts.

Targets that misbehave on purpose (a flood, one that never reads) are small Python TCP
servers; sshd cannot be made to do either on demand.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time

import pytest
from websockets.sync.client import connect

from clients import raw_request, upgrade_headers
from test_sidecar import FaultyTarget, sky_url
from testbed.sidecar import ALICE, Sidecar, standard_args

# How long a session may take to end after its reason, at most: the close frame's wait and
# the shutdown's (2 s each, see the bridge), and a timer tick.
END_SLACK = 5.0


class SilentTarget:
    """A TCP target that sends an SSH-like banner and then never reads."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.sendall(b"SSH-2.0-silent\r\n")
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def stuck_client(port: int) -> socket.socket:
    """Upgrades with a tiny receive buffer and then reads nothing (the 101 aside)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    req = (
        "GET /kubernetes-pod-ssh-proxy?cluster_name=prod&client_version=62 HTTP/1.1\r\n"
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {ALICE}\r\n\r\n"
    )
    s.sendall(req.encode())
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


def masked(opcode_byte: int, payload: bytes) -> bytes:
    """A client frame: first byte as given (FIN and opcode), masked payload."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes([opcode_byte, 0x80 | len(payload)])
    else:
        head = bytes([opcode_byte, 0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + body


# --- Limits that hold whatever a peer does ------------------------------------------------------


def test_a_client_that_stops_reading_cannot_outlive_max_session_age(workdir):
    """The target floods, the client never reads: the write to the client blocks, and still the
    max-session-age fires, the session ends and its audit line says why."""
    target = FaultyTarget("flood")
    try:
        args = standard_args(workdir, f"127.0.0.1:{target.port}", "--max-session-age", "2s")
        with Sidecar(workdir / "stuck-age", args) as sc:
            s = stuck_client(sc.port)
            t0 = time.monotonic()
            (end,) = sc.wait_audit("session_end", timeout=2 + END_SLACK + 2)
            assert time.monotonic() - t0 < 2 + END_SLACK
            assert end["close_reason"] == "max_session_age"
            assert sc.metric("wsgate_sessions_open") == 0
            s.close()
    finally:
        target.close()


def test_a_target_that_stops_reading_cannot_outlive_max_session_age(workdir):
    """The client pushes without end, the target never reads: the session still ends on time."""
    target = SilentTarget()
    try:
        args = standard_args(workdir, f"127.0.0.1:{target.port}", "--max-session-age", "2s")
        with Sidecar(workdir / "stuck-target", args) as sc:
            with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"},
                         open_timeout=10, close_timeout=1) as ws:
                assert ws.recv(timeout=10) == b"\x00SSH-2.0-silent\r\n"
                t0 = time.monotonic()

                def push() -> None:
                    try:
                        while True:
                            ws.send(b"\x00" + b"x" * 65000)
                    except Exception:  # the session ended under us
                        pass

                threading.Thread(target=push, daemon=True).start()
                (end,) = sc.wait_audit("session_end", timeout=2 + END_SLACK + 2)
                assert time.monotonic() - t0 < 2 + END_SLACK
                assert end["close_reason"] == "max_session_age"
                assert end["bytes_up"] > 0
    finally:
        target.close()


def test_sigterm_ends_a_stuck_session_with_its_audit_line(workdir):
    """SIGTERM with a session whose client reads nothing: after the grace period the session is
    ended (its 1001 cannot be delivered; the connection is dropped), audited, and the process
    exits cleanly."""
    target = FaultyTarget("flood")
    try:
        args = standard_args(workdir, f"127.0.0.1:{target.port}", "--shutdown-grace", "1s")
        sc = Sidecar(workdir / "stuck-drain", args).start()
        try:
            s = stuck_client(sc.port)
            time.sleep(0.5)  # the client's socket fills
            t0 = time.monotonic()
            sc.terminate()
            assert sc.proc.wait(1 + END_SLACK + 3) == 0
            assert time.monotonic() - t0 < 1 + END_SLACK
            (end,) = sc.audit("session_end")
            assert end["close_reason"] == "shutdown"
            s.close()
        finally:
            sc.stop()
    finally:
        target.close()


# --- Nothing revealed before authentication -----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/kubernetes-pod-ssh-proxy?cluster_name=prod",
        "/kubernetes-pod-ssh-proxy?cluster_name=staging",
        "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=7",
        "/ssh/dev",
        "/ssh/staging",
    ],
)
def test_an_anonymous_caller_gets_401_whatever_the_cluster(workdir, sshd, path):
    """Allowed or not, existing or not: without valid credentials the answer is the same 401,
    so an anonymous caller cannot map the clusters."""
    with Sidecar(workdir / "anon", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        for token, reason in ((None, "missing_credentials"), ("sky_wrong", "invalid_credentials")):
            headers = upgrade_headers("x")
            if token:
                headers.append(("Authorization", f"Bearer {token}"))
            r = raw_request(sc.port, path, headers)
            assert (r.status, r.json()["reason"]) == (401, reason), (path, token)


# --- Audit lines, and JSON that parses ----------------------------------------------------------


def strict_json(line: str) -> dict:
    """json.loads that refuses a key twice in one object (as many log pipelines do)."""
    def pairs(items):
        keys = [k for k, _ in items]
        dup = {k for k in keys if keys.count(k) > 1}
        assert not dup, f"duplicate keys {dup} in {line}"
        return dict(items)

    return json.loads(line, object_pairs_hook=pairs)


def test_audit_lines_say_who_from_where_and_why(workdir, sshd):
    """Start, end and refusal lines carry the user (once known), cluster, target, the TCP peer
    and the original client: the peer unless it is a trusted hop, then what it reports."""
    for trusted, want_client in ((None, "127.0.0.1"), ("127.0.0.0/8", "203.0.113.9")):
        extra = ("--trusted-proxies", trusted) if trusted else ()
        args = standard_args(workdir, f"127.0.0.1:{sshd.port}", *extra)
        with Sidecar(workdir / f"audit-{bool(trusted)}", args) as sc:
            forwarded = {"Authorization": f"Bearer {ALICE}", "X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
            with connect(sky_url(sc.port), additional_headers=forwarded, open_timeout=10) as ws:
                assert ws.recv(timeout=10).startswith(b"\x00SSH-2.0-")
            # Refused after authentication (the user is known) and before it (it is not).
            r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=staging",
                            upgrade_headers("x") + [("Authorization", f"Bearer {ALICE}"),
                                                    ("X-Forwarded-For", "203.0.113.9")])
            assert r.status == 404
            r = raw_request(sc.port, "/ssh/dev", upgrade_headers("x") + [("x-envoy-external-address", "203.0.113.9")])
            assert r.status == 401
            (start,) = sc.wait_audit("session_start")
            (end,) = sc.wait_audit("session_end")
            refused = sc.wait_audit("session_refused")
            for line in (start, end, *refused):
                assert line["peer_addr"].startswith("127.0.0.1:"), line
                assert line["client_addr"] == want_client, line
                assert "reason" in line or "close_reason" in line or line["event"] == "session_start"
            for line in (start, end):
                assert (line["user"], line["cluster"]) == ("alice", "prod")
                assert line["target_addr"] == f"127.0.0.1:{sshd.port}"
            by_status = {line["status"]: line for line in refused}
            assert by_status[404]["user"] == "alice" and by_status[404]["cluster"] == "staging"
            assert by_status[404]["reason"] == "unknown_cluster"
            assert "user" not in by_status[401] and by_status[401]["reason"] == "missing_credentials"
            assert ALICE not in sc.log()


def test_every_json_log_line_parses_with_unique_keys(workdir, sshd):
    """A session, refusals and an unreachable target: each line on stderr is one JSON object
    with no key twice (the session target used to collide with tracing's own `target`)."""
    with Sidecar(workdir / "json", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
            assert ws.recv(timeout=10).startswith(b"\x00SSH-2.0-")
        raw_request(sc.port, "/ssh/dev", upgrade_headers("x"))
        sc.wait_audit("session_end")
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    dead_port = down.getsockname()[1]
    down.close()
    with Sidecar(workdir / "json-dead", standard_args(workdir, f"127.0.0.1:{dead_port}")) as sc2:
        r = raw_request(sc2.port, "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                        upgrade_headers("x") + [("Authorization", f"Bearer {ALICE}")])
        assert r.status == 502
        sc2.wait_audit("session_refused")
    lines = [ln for s in (sc, sc2) for ln in s.log().splitlines() if ln.strip()]
    assert len(lines) >= 6
    parsed = [strict_json(ln) for ln in lines]
    assert any(p.get("event") == "session_start" and p.get("target") == "wsgate::audit" for p in parsed)
    unreachable = [p for p in parsed if "unreachable" in p.get("message", "")]
    assert unreachable and unreachable[0]["target_addr"] == f"127.0.0.1:{dead_port}"


# --- What real clients send ---------------------------------------------------------------------


def test_a_typed_message_may_start_with_an_empty_fragment(workdir, sshd):
    """RFC 6455 allows empty fragments: a SkyPilot ping and SSH bytes whose type byte comes in a
    later frame are taken, not closed with 1008."""
    with Sidecar(workdir / "frag", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        key = base64.b64encode(os.urandom(16)).decode()
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        s.sendall((
            "GET /kubernetes-pod-ssh-proxy?cluster_name=prod&client_version=62 HTTP/1.1\r\n"
            "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {ALICE}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        ping = struct.pack("!BI", 1, 4242)
        # A ping message as an empty first fragment, then its bytes.
        s.sendall(masked(0x02, b"") + masked(0x80, ping))
        # SSH bytes likewise: the type byte in the second fragment.
        s.sendall(masked(0x02, b"") + masked(0x00, b"") + masked(0x80, b"\x00SSH-2.0-frag\r\n"))
        got = b""
        deadline = time.monotonic() + 10
        while ping not in got and time.monotonic() < deadline:
            got += s.recv(65536)
        assert ping in got, got
        s.sendall(masked(0x88, struct.pack("!H", 1000)))
        s.close()
        (end,) = sc.wait_audit("session_end")
        assert end["close_reason"] in ("client_closed", "client_gone", "target_closed"), end
        assert end["bytes_up"] == len(b"SSH-2.0-frag\r\n")


def test_an_oversized_request_head_is_refused_and_the_sidecar_still_serves(workdir, sshd):
    """A head larger than 64 KiB (here a 100 KB subprotocol, which a 101 would echo back) is
    answered 431 and the connection closed; ordinary heads with a token and cookies pass."""
    with Sidecar(workdir / "bighead", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        s.sendall((
            "GET /kubernetes-pod-ssh-proxy?cluster_name=prod HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {ALICE}\r\n"
            f"Sec-WebSocket-Protocol: {'p' * 100_000}\r\n\r\n").encode())
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
        s.close()
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert sc.metric("wsgate_sessions_open") == 0
        cookies = "; ".join(f"c{i}={'v' * 200}" for i in range(20))
        with connect(sky_url(sc.port), additional_headers={"Authorization": f"Bearer {ALICE}", "Cookie": cookies},
                     open_timeout=10) as ws:
            assert ws.recv(timeout=10).startswith(b"\x00SSH-2.0-")
