"""`wsgate proxy` (the release binary) against scripted servers that try what a hostile or
compromised server could: a SkyPilot redirect frame that sends the session, and with it the
user's credentials, to another origin; and text (error bodies, close reasons, redirect URLs)
made to drive the user's terminal. Each server is a few lines over a real loopback socket, so
every byte the client sent is seen and every byte it gets is chosen.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import threading
from typing import Callable

import pytest

from testbed.wsgate import WSGATE

TOKEN = "sky_user_token_0123456789"
COOKIE = "session=cookie-s3cret"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Everything a terminal acts on: CSI colour, BEL, CR, an OSC title, C1 CSI, bidi override.
HOSTILE = "\x1b[31mred\x07bell\rcr\x1b]0;title\x07\u009b2J\u202eevil"
RAW_CONTROLS = ["\x1b", "\x07", "\r", "\u009b", "\u202e"]
ESCAPED = ["\\x1b[31mred", "\\x07bell", "\\x1b]0;title", "\\u{009b}2J", "\\u{202e}evil"]
NO_PROXY_ENV = {k: "" for k in ("http_proxy", "HTTP_PROXY", "ws_proxy", "WS_PROXY", "all_proxy", "ALL_PROXY")}


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode())


BANNER = frame(0x2, b"\x00SSH-2.0-scripted\r\n")


class Scripted:
    """A loopback server: for each connection, reads the request head, records it (request
    line and lower-cased headers) and lets `answer(head, conn)` reply."""

    def __init__(self, answer: Callable[[dict, socket.socket], None]):
        self.answer = answer
        self.requests: list[dict] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
                headers: dict[str, list[str]] = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k.strip().lower(), []).append(v.strip())
                head = {"line": lines[0], "headers": headers}
                self.requests.append(head)
                try:
                    self.answer(head, conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def upgrade(head: dict, conn: socket.socket, frames: bytes) -> None:
    """Accepts the WebSocket upgrade, sends `frames` (with the 101, as servers may), then
    waits for the client to finish."""
    key = head["headers"]["sec-websocket-key"][0].encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode() + frames)
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass


def http_answer(conn: socket.socket, status: str, content_type: str, body: bytes) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)


def run_wsgate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(WSGATE), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          env={**os.environ, **NO_PROXY_ENV, **(env or {})}, timeout=30)


@pytest.fixture
def servers():
    made: list[Scripted] = []

    def make(answer):
        s = Scripted(answer)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def redirect_frame(url: str, headers: dict) -> bytes:
    return frame(0x2, b"\x03" + json.dumps({"url": url, "headers": headers}).encode())


def proxy_args(port: int) -> list[str]:
    # --allow-plaintext: a loopback redirect target is plaintext-safe anyway; the flag keeps
    # any client's plaintext guard out of what these tests look at.
    return ["proxy", f"http://127.0.0.1:{port}", "prod", "--header", f"Cookie: {COOKIE}", "--allow-plaintext"]


def test_a_redirect_to_another_origin_gets_no_user_credentials(servers):
    """SkyPilot's redirect frame names a server on another port (another origin): the user's
    cookie and token stay with the origin they were given for; the redirect's own headers go."""
    target = servers(lambda head, conn: upgrade(head, conn, BANNER + close_frame(1000)))
    url = f"ws://127.0.0.1:{target.port}/kubernetes-pod-ssh-proxy?cluster_name=prod"
    first = servers(lambda head, conn: upgrade(head, conn, redirect_frame(url, {"X-Redirect-Ticket": "t-1"})))
    r = run_wsgate(*proxy_args(first.port), env={"WSGATE_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"SSH-2.0-scripted\r\n"
    sent = first.requests[0]["headers"]
    assert sent["cookie"] == [COOKIE] and sent["authorization"] == [f"Bearer {TOKEN}"], sent
    got = target.requests[0]["headers"]
    assert "cookie" not in got, got
    assert "authorization" not in got, got
    assert not any(TOKEN in v or "cookie-s3cret" in v for vs in got.values() for v in vs), got
    assert got["x-redirect-ticket"] == ["t-1"], got


def test_a_redirect_within_the_origin_keeps_the_credentials(servers):
    """The same scheme, host and port (another path): the server that asked already has the
    credentials, so the token and cookie go again; a header the redirect names replaces the
    user's of the same name."""

    def answer(head, conn):
        if "hop=2" in head["line"]:
            upgrade(head, conn, BANNER + close_frame(1000))
        else:
            url = f"ws://127.0.0.1:{server.port}/kubernetes-pod-ssh-proxy?cluster_name=prod&hop=2"
            upgrade(head, conn, redirect_frame(url, {"X-Redirect-Ticket": "t-2", "Cookie": "replaced=1"}))

    server = servers(answer)
    r = run_wsgate(*proxy_args(server.port), env={"WSGATE_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr.decode()
    assert len(server.requests) == 2
    again = server.requests[1]["headers"]
    assert again["authorization"] == [f"Bearer {TOKEN}"], again
    assert again["cookie"] == ["replaced=1"], again
    assert again["x-redirect-ticket"] == ["t-2"], again


@pytest.mark.parametrize("status", ["401 Unauthorized", "403 Forbidden"])
def test_a_refusal_after_a_cross_origin_redirect_says_the_token_was_withheld(servers, status):
    """The redirect target (another origin) refuses the session: the user's token was left
    out there on purpose, and the message says so (and why), instead of asking for a token
    that would be left out again."""
    body = json.dumps({"error": "who are you", "reason": "unauthenticated"}).encode()
    target = servers(lambda head, conn: http_answer(conn, status, "application/json", body))
    url = f"ws://127.0.0.1:{target.port}/kubernetes-pod-ssh-proxy?cluster_name=prod"
    first = servers(lambda head, conn: upgrade(head, conn, redirect_frame(url, {"X-Redirect-Ticket": "t-1"})))
    r = run_wsgate(*proxy_args(first.port), env={"WSGATE_TOKEN": TOKEN})
    err = r.stderr.decode()
    assert r.returncode == 4, err
    assert err.count("\n") == 1 and err.startswith(f"wsgate: {status[:3]} from 127.0.0.1:{target.port}: "), err
    for needle in (
        f"no token was sent, on purpose: the server redirected this session to another origin (ws://127.0.0.1:{target.port})",
        "the token and --header values stay with the origin they were given for",
        "only the headers the redirect named were sent: x-redirect-ticket",
        f"`wsgate proxy http://127.0.0.1:{target.port} ...`",
    ):
        assert needle in err, (needle, err)
    assert "pass one with" not in err and TOKEN not in err and "cookie-s3cret" not in err, err
    assert "authorization" not in target.requests[0]["headers"], target.requests[0]


def assert_escaped(stderr: bytes, *expected: str) -> str:
    err = stderr.decode()
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    for c in RAW_CONTROLS:
        assert c not in err, (c, err)
    for e in expected:
        assert e in err, (e, err)
    return err


def test_an_error_body_cannot_drive_the_terminal(servers):
    """A JSON error body (the `error` and `reason` the client shows) full of control characters."""
    body = json.dumps({"error": HOSTILE, "reason": "why\x1b[0m"}).encode()
    s = servers(lambda head, conn: http_answer(conn, "403 Forbidden", "application/json", body))
    r = run_wsgate("proxy", f"http://127.0.0.1:{s.port}", "prod", env={"WSGATE_TOKEN": TOKEN})
    assert r.returncode == 4
    assert_escaped(r.stderr, *ESCAPED, "why\\x1b[0m")


def test_a_plain_text_body_is_shown_escaped(servers):
    """A text/plain body (what Istio's RBAC denial looks like) is shown, on one line, escaped."""
    body = ("denied: " + HOSTILE + "\r\nsecond line").encode()
    s = servers(lambda head, conn: http_answer(conn, "500 Internal Server Error", "text/plain", body))
    r = run_wsgate("proxy", f"http://127.0.0.1:{s.port}", "prod")
    assert r.returncode == 1
    # The body's whitespace is folded (its CR and LF become spaces); the rest is escaped.
    err = assert_escaped(r.stderr, "denied: \\x1b[31mred\\x07bell", "\\x1b]0;title", "\\u{202e}evil")
    assert "second line" in err


def test_a_close_reason_cannot_drive_the_terminal(servers):
    s = servers(lambda head, conn: upgrade(head, conn, BANNER + close_frame(1011, HOSTILE)))
    r = subprocess.run([str(WSGATE), "proxy", f"http://127.0.0.1:{s.port}", "prod"], stdin=subprocess.PIPE,
                       capture_output=True, env={**os.environ, **NO_PROXY_ENV}, timeout=30)
    assert r.returncode == 10
    assert_escaped(r.stderr, "1011", *ESCAPED)


def test_a_redirect_url_cannot_drive_the_terminal(servers):
    s = servers(lambda head, conn: upgrade(head, conn, redirect_frame("ws://" + HOSTILE + "/", {})))
    r = run_wsgate("proxy", f"http://127.0.0.1:{s.port}", "prod", "-v")
    err = r.stderr.decode()
    assert r.returncode == 10, err
    for c in RAW_CONTROLS:
        assert c not in err, (c, err)
    assert "\\x1b[31mred" in err.splitlines()[-1], err
