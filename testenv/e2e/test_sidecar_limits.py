"""wsgate-sidecar's connection limits and compatibility, against the real release binary, a real
sshd and python `websockets`: every request head has a deadline and keep-alive idle time has
one (slowloris in all its forms), so has a `101` the client does not take, open connections are
capped by --max-connections, a `Basic` Authorization (SkyPilot's `user:pass@` endpoint URLs) is
ignored with `--auth none`, and handshake latency is measured below a millisecond. Nothing is
mocked.
"""
from __future__ import annotations

import base64
import selectors
import socket
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from clients import raw_request, upgrade_headers
from testbed.sidecar import ALICE, HEALTHZ, Sidecar, stall_a_101, standard_args, until



def sky_url(port: int, cluster: str = "prod") -> str:
    return f"ws://127.0.0.1:{port}/kubernetes-pod-ssh-proxy?cluster_name={cluster}&worker=0&client_version=62"


def open_session(port: int, **headers: str) -> bytes:
    """Opens a session, returns the first frame (sshd's banner, type byte 0), closes."""
    with connect(sky_url(port), additional_headers=headers, open_timeout=10) as ws:
        return ws.recv(timeout=10)


def read_answer(s: socket.socket) -> bytes:
    """Reads one small HTTP answer (head and a content-length body) on a kept-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


class Slow:
    """One slow connection: how it misbehaves, and when its deadline's clock started."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.started = time.monotonic()
        self.trickle = b""
        self.closed_at: float | None = None

    def begin(self) -> None:
        """Puts the connection in its slow state; the clock starts when that state does (for
        leading blank lines, at connect: the first head's deadline runs from accept)."""
        if self.kind == "leading-blank-lines":
            self.trickle = b"\r\n" * 1000 + HEALTHZ
        else:
            self.sock.sendall(HEALTHZ)
            assert read_answer(self.sock) == b"ok\n"
            self.started = time.monotonic()
            if self.kind == "second-head-trickled":
                self.trickle = HEALTHZ * 10
        self.sock.setblocking(False)
        self.step()

    def step(self) -> None:
        """Sends the next byte of a trickle, if the connection still takes it."""
        if self.trickle and self.closed_at is None:
            try:
                self.sock.send(self.trickle[:1])
                self.trickle = self.trickle[1:]
            except OSError:
                pass


def test_every_head_and_keepalive_idle_have_a_deadline(workdir, sshd):
    """Pins: each request head has --header-read-timeout, not only the first, and a kept-alive
    connection has --keepalive-timeout. 200 connections each: idle after a keep-alive request,
    trickling a second head one byte at a time, and trickling leading blank lines from accept,
    plus 20 idle kept-alive connections on the admin listener. All are cut about 1 s after their
    slow state began (never before, never much after), and real sessions open before, during and
    after; the sidecar's fds come back."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--header-read-timeout", "1s",
                         "--keepalive-timeout", "1s")
    with Sidecar(workdir / "heads", args) as sc:
        assert open_session(sc.port, Authorization=f"Bearer {ALICE}").startswith(b"\x00SSH-2.0-")
        fds_before = sc.open_fds()
        slow, admin = [], []
        # Blank lines last: their clock runs from connect, so they connect just before the loop.
        for kind in ("keepalive-idle", "second-head-trickled", "leading-blank-lines"):
            for _ in range(200):
                slow.append(Slow(kind, sc.port))
                slow[-1].begin()
        for _ in range(20):
            admin.append(Slow("keepalive-idle", sc.admin_port))
            admin[-1].begin()
        everyone = slow + admin
        sel = selectors.DefaultSelector()
        for c in everyone:
            sel.register(c.sock, selectors.EVENT_READ, c)

        during: list[bytes] = []
        session = threading.Thread(
            target=lambda: during.append(open_session(sc.port, Authorization=f"Bearer {ALICE}")))
        session.start()
        deadline = time.monotonic() + 8
        last_step = 0.0
        while any(c.closed_at is None for c in everyone) and time.monotonic() < deadline:
            now = time.monotonic()
            if now - last_step >= 0.05:
                last_step = now
                for c in everyone:
                    c.step()
            for key, _ in sel.select(timeout=0.02):
                c = key.data
                try:
                    gone = c.sock.recv(4096) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    c.closed_at = time.monotonic()
                    sel.unregister(c.sock)
        session.join(15)
        assert during and during[0].startswith(b"\x00SSH-2.0-"), "a session during the slow flood"

        for kind in ("keepalive-idle", "second-head-trickled", "leading-blank-lines"):
            mine = [c for c in slow if c.kind == kind]
            open_still = [c for c in mine if c.closed_at is None]
            assert not open_still, f"{kind}: {len(open_still)} of 200 never cut"
            held = sorted(c.closed_at - c.started for c in mine)
            assert 0.8 <= held[0] and held[-1] <= 3.0, f"{kind}: held {held[0]:.2f}..{held[-1]:.2f} s"
        held = sorted(c.closed_at - c.started for c in admin if c.closed_at is not None)
        assert len(held) == len(admin) and held[-1] <= 3.0, f"admin: {held}"
        for c in everyone:
            c.sock.close()
        assert open_session(sc.port, Authorization=f"Bearer {ALICE}").startswith(b"\x00SSH-2.0-")
        assert sc.wait_open_fds(fds_before) <= fds_before


def test_keepalive_zero_closes_after_each_answer(workdir, sshd):
    """Pins: --keepalive-timeout 0 turns keep-alive off: every answer closes its connection."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--keepalive-timeout", "0s")
    with Sidecar(workdir / "no-keepalive", args) as sc:
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=5)
        s.sendall(HEALTHZ)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()
        s.close()


BASIC = "Basic " + base64.b64encode(b"user:pass").decode()


def test_basic_authorization_is_ignored_without_auth_and_refused_with_tokens(workdir, sshd):
    """Pins: SkyPilot's client sends `Authorization: Basic` for a `user:pass@` endpoint URL, and
    its own server accepts that. With --auth none the header is ignored and the session opens;
    with a token backend it is no bearer token: 401, as if no credential were sent."""
    open_args = [
        "--target", f"127.0.0.1:{sshd.port}",
        "--auth", "none", "--allow-unauthenticated",
        "--log-format", "json",
    ]
    with Sidecar(workdir / "basic-open", open_args) as sc:
        assert open_session(sc.port, Authorization=BASIC).startswith(b"\x00SSH-2.0-")
    with Sidecar(workdir / "basic-tokens", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                        upgrade_headers("basic") + [("Authorization", BASIC)])
        assert (r.status, r.json()["reason"]) == (401, "missing_credentials")
        assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(InvalidStatus) as e:
            open_session(sc.port, Authorization=BASIC)
        assert e.value.response.status_code == 401


def test_handshake_latency_has_sub_millisecond_buckets(workdir, sshd):
    """Pins: the handshake histogram (head in → 101) has buckets below 1 ms, so a LAN
    handshake is not reported as 0 or lumped with everything under a millisecond."""
    with Sidecar(workdir / "latency", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
        open_session(sc.port, Authorization=f"Bearer {ALICE}")
        name = "wsgate_handshake_duration_seconds"
        assert sc.metric(f'{name}_count{{result="accepted"}}') == 1
        assert sc.metric(f'{name}_bucket{{result="accepted",le="+Inf"}}') == 1
        text = sc.admin("/metrics")[1]
        for le in ("0.0001", "0.00025", "0.0005"):
            assert f'{name}_bucket{{result="accepted",le="{le}"}}' in text, text


# --- A 101 the client does not take ----------------------------------------------------------

# The `101` echoes the first subprotocol the client offers: a long one makes a long answer, so
# the socket can be full before all of it is written (hyper reads the next request only once
# the previous answer is in the socket, so the answers before must all fit, and the 101 not).
# Under the sidecar's 64 KiB head limit, and long enough that the 101 echoing it does not fit
# in what is left of the socket's buffers.
LONG_PROTOCOL = "p" * 60_000


def stalling_upgrade() -> bytes:
    """A valid upgrade whose 101 is some 60 kB long."""
    return (
        "GET /kubernetes-pod-ssh-proxy?cluster_name=prod&client_version=62 HTTP/1.1\r\n"
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {LONG_PROTOCOL}\r\n"
        f"Authorization: Bearer {ALICE}\r\n\r\n").encode()


def stall_new_101(sc: Sidecar) -> socket.socket:
    """A connection whose 101 the sidecar has begun to write and cannot finish (see
    `stall_a_101`): one that gets through starts a session, which ends once the socket is
    closed."""
    def settle() -> None:
        until(lambda: not sc.metric("wsgate_sessions_open"), 5)

    sock = stall_a_101(sc.port, sc.metric, stalling_upgrade(), "wsgate_sessions_total", settle)
    if sock is None:
        pytest.fail("no pipeline length stalled the 101")
    return sock


@pytest.mark.parametrize("which", ["write-deadline", "upgrade-wait"])
def test_a_101_the_client_does_not_take_gives_the_session_slot_back(workdir, sshd, which):
    """Pins: a client that keeps the 101 from being written (pipelined GETs it never reads,
    the upgrade last) does not hold its admission and its sshd connection for ever. The write
    has --header-read-timeout (`write-deadline`), and the wait for the upgraded connection has
    --handshake-timeout (`upgrade-wait`, with the write deadline far off); either one ends it:
    counted and audited as `upgrade_failed`, the slot of --max-sessions 1 comes back, the
    sshd connection is closed, and SIGTERM exits within the grace period even while the HTTP
    connection is still stuck."""
    timeouts = {
        "write-deadline": ["--header-read-timeout", "1s"],
        "upgrade-wait": ["--header-read-timeout", "60s", "--handshake-timeout", "1s"],
    }[which]
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--max-sessions", "1",
                         "--shutdown-grace", "1s", *timeouts)
    sc = Sidecar(workdir / f"stalled-101-{which}", args).start()
    try:
        fds_before = sc.open_fds()
        stuck = stall_new_101(sc)
        t0 = time.monotonic()
        (refused,) = sc.wait_audit("session_refused", timeout=5)
        assert time.monotonic() - t0 < 3
        assert (refused["reason"], refused["user"], refused["cluster"]) == ("upgrade_failed", "alice", "prod")
        assert sc.metric('wsgate_handshake_failures_total{reason="upgrade_failed"}') == 1
        assert sc.metric("wsgate_sessions_open") == 0 and sc.admin("/sessions")[1].strip() == "[]"
        # The one slot is free again: a real session opens.
        assert open_session(sc.port, Authorization=f"Bearer {ALICE}").startswith(b"\x00SSH-2.0-")
        # The sshd connection is gone (and, with the write deadline, the client's too).
        still = 1 if which == "upgrade-wait" else 0
        assert sc.wait_open_fds(fds_before + still) <= fds_before + still
        t0 = time.monotonic()
        sc.terminate()
        assert sc.proc.wait(5) == 0
        assert time.monotonic() - t0 < 1 + 2, "SIGTERM waited for the stuck connection"
        stuck.close()
    finally:
        sc.stop()


# --- --max-connections ---------------------------------------------------------------------------


def answered(s: socket.socket, within: float) -> bool:
    """Whether an answer starts arriving on `s` within `within` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except socket.timeout:
        return False


def test_connections_past_max_connections_wait_in_the_listen_queue(workdir, sshd):
    """Pins: --max-connections caps the connections the sidecar holds. Past it, connections
    wait in the kernel's listen queue: unanswered and costing the process no descriptor, until
    one closes or is cut by its deadline; `wsgate_connections_open` shows the count. 60 idle
    connections against a cap of 20: the process holds 20, a queued request is answered as
    soon as one of the 20 closes, and a session gets through once the idle ones are cut."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--max-connections", "20",
                         "--max-sessions", "10", "--header-read-timeout", "3s",
                         "--keepalive-timeout", "3s")
    with Sidecar(workdir / "max-connections", args) as sc:
        fds_before = sc.open_fds()
        held = [socket.create_connection(("127.0.0.1", sc.port)) for _ in range(20)]
        deadline = time.monotonic() + 5
        while sc.metric("wsgate_connections_open") < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = socket.create_connection(("127.0.0.1", sc.port))
        queued.sendall(HEALTHZ)
        more = [socket.create_connection(("127.0.0.1", sc.port)) for _ in range(39)]
        assert not answered(queued, 0.5), "a 21st connection was served"
        assert sc.metric("wsgate_connections_open") == 20
        # A few for the admin connection /metrics just used and the log; not one per client.
        assert sc.open_fds() <= fds_before + 20 + 5, (sc.open_fds(), fds_before)

        held.pop(0).close()
        assert answered(queued, 2), "a place came back and the queued request was not served"
        assert read_answer(queued) == b"ok\n"
        # The rest of the queue gives up; the idle ones still held are cut by the head deadline.
        for s in more:
            s.close()
        t0 = time.monotonic()
        banner = open_session(sc.port, Authorization=f"Bearer {ALICE}")
        took = time.monotonic() - t0
        assert banner.startswith(b"\x00SSH-2.0-")
        assert 1.5 <= took <= 3 + 3, f"the session waited {took:.1f} s"
        for s in held + [queued]:
            s.close()
        deadline = time.monotonic() + 5
        while sc.metric("wsgate_connections_open") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sc.metric("wsgate_connections_open") == 0
        assert sc.wait_open_fds(fds_before) <= fds_before
