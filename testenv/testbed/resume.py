"""A hand-written client of the resumption protocol (docs/resume.md), for the tests that need to
do what `wsgate proxy` never does: resume with a wrong secret or as another user, hold a resume
half-way, drop a leg at an exact moment, never read nor acknowledge.

`Leg` is one WebSocket connection over a plain socket (RFC 6455, client side: masked frames,
pings answered); `Session` is the resumable session on top: it reads the `session <id>
<secret>` message, counts the session bytes each way, acknowledges, and on `resume()` opens a
new leg, exchanges `resume <received> <sent>` and replays what the sidecar has not received.
It keeps every byte it sent (tests send little), so it can replay from any offset the sidecar
names.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from .sidecar import stall_a_101, until

RESUME_HEADER = "x-wsgate-resume"
HEX32 = re.compile(r"[0-9a-f]{32}")


class Refused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def reason(self) -> str:
        """The `reason` of the sidecar's JSON refusal body ("" if there is none)."""
        try:
            return json.loads(self.body).get("reason", "")
        except ValueError:
            return ""


class Closed(Exception):
    """The leg ended: a close frame (`code`), or the connection without one (`code` None)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed: {code} {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Leg:
    """One WebSocket connection. `headers` are the 101's, lower-cased."""

    sock: socket.socket
    headers: dict[str, str]
    buf: bytearray = field(default_factory=bytearray)

    @classmethod
    def connect(cls, port: int, path: str, headers: list[tuple[str, str]], *, host: str = "127.0.0.1",
                timeout: float = 10.0, rcvbuf: int | None = None) -> "Leg":
        """The upgrade request with `headers`; raises `Refused` for an answer other than 101.
        `rcvbuf`: a small receive buffer (set before connecting) for a client that never reads."""
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers)]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        # Read the head byte by byte: whatever follows it (frames, a body) stays in the socket.
        head = bytearray()
        while not head.endswith(b"\r\n\r\n"):
            b = sock.recv(1)
            if not b:
                sock.close()
                raise Refused(0, {}, bytes(head))
            head += b
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        hdrs = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if status != 101:
            body = b""
            want = int(hdrs.get("content-length", "0"))
            while len(body) < want:
                chunk = sock.recv(want - len(body))
                if not chunk:
                    break
                body += chunk
            sock.close()
            raise Refused(status, hdrs, body)
        return cls(sock, hdrs)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        # Masking by whole 4-byte words through int arithmetic: fast enough for a few MiB.
        padded = payload + b"\0" * (-n % 4)
        m = int.from_bytes(mask * (len(padded) // 4), "big") if padded else 0
        masked = (int.from_bytes(padded, "big") ^ m).to_bytes(len(padded), "big")[:n] if padded else b""
        self.sock.sendall(head + mask + masked)

    def text(self, message: str) -> None:
        self.send(0x1, message.encode())

    def binary(self, data: bytes) -> None:
        self.send(0x2, data)

    def close(self, code: int = 1000, wait: float = 0.0) -> None:
        """A close frame, then the socket. With `wait`, reads (and drops) what the server still
        sends until its close frame, for up to `wait` seconds first: closing a socket with
        unread bytes makes the kernel send a reset, which may reach the server before it reads
        the close frame (and a lost leg of a resumable session is parked, not ended)."""
        try:
            self.send(0x8, struct.pack("!H", code))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.frame(deadline - time.monotonic())
        except (OSError, Closed, TimeoutError):
            pass
        self.sock.close()

    def drop(self) -> None:
        """Ends the connection abortively (RST), as a network failure would: no close frame."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no frame in time") from None
            except OSError as e:
                raise Closed(None, f"{type(e).__name__}") from e
            if not chunk:
                raise Closed(None, "EOF")
            self.buf += chunk

    def frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next data or close frame (opcode, payload); pings are answered on the way."""
        deadline = time.monotonic() + timeout
        while True:
            self._fill(2, deadline)
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                self._fill(4, deadline)
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._fill(10, deadline)
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._fill(off + n, deadline)
            payload = bytes(self.buf[off:off + n])
            del self.buf[:off + n]
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(code, payload[2:].decode(errors="replace"))
            return opcode, payload


def resume_headers(token: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}"), *extra]


@dataclass
class Session:
    """A resumable session seen from the client. `port`/`path` are where legs connect to."""

    port: int
    path: str
    token: str
    id: str = ""
    secret: str = ""
    leg: Leg | None = None
    sent: bytearray = field(default_factory=bytearray)  # every session byte sent
    data: bytearray = field(default_factory=bytearray)  # every session byte received
    peer_acked: int = 0  # the sidecar's last `ack`
    route: str | None = None  # the routing header's value from the first 101, if any
    route_header: str = "x-wsgate-route"
    # What the sidecar said it had received, at each resume (what we replayed from).
    resumed_at: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, port: int, path: str, token: str, *extra: tuple[str, str], **kw) -> "Session":
        s = cls(port, path, token, **kw)
        s.leg = Leg.connect(port, path, resume_headers(token, (RESUME_HEADER, "new"), *extra))
        try:
            if s.leg.headers.get(RESUME_HEADER) != "v1":
                raise AssertionError(f"resumption not accepted: 101 headers {s.leg.headers}")
            s.route = s.leg.headers.get(s.route_header)
            opcode, payload = s.leg.frame()
            words = payload.decode(errors="replace").split(" ")
            if (opcode != 0x1 or len(words) != 3 or words[0] != "session"
                    or not all(HEX32.fullmatch(w) for w in words[1:])):
                raise AssertionError(f"the first message is not `session <id> <secret>`: {opcode} {payload[:120]!r}")
        except BaseException:
            s.leg.sock.close()
            raise
        s.id, s.secret = words[1], words[2]
        return s

    def send(self, data: bytes) -> None:
        self.sent += data
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        # Frames of at most 64 KiB: well under any sidecar's --max-frame-size.
        for i in range(0, len(data), 65536):
            self.leg.binary(data[i:i + 65536])

    def ack(self) -> None:
        self.leg.text(f"ack {len(self.data)}")

    def _control(self, payload: bytes) -> None:
        words = payload.decode(errors="replace").split(" ")
        if len(words) == 2 and words[0] == "ack" and words[1].isdigit():
            self.peer_acked = int(words[1])
            return
        raise AssertionError(f"unexpected control message mid-session: {payload[:120]!r}")

    def read(self, n: int, timeout: float = 10.0) -> bytes:
        """Reads until `n` more session bytes have arrived (acknowledging as it goes); returns them."""
        start = len(self.data)
        deadline = time.monotonic() + timeout
        acked = start
        while len(self.data) < start + n:
            opcode, payload = self.leg.frame(max(0.01, deadline - time.monotonic()))
            if opcode == 0x1:
                self._control(payload)
            else:
                self.data += payload
                if len(self.data) - acked >= 128 * 1024:
                    self.ack()
                    acked = len(self.data)
        self.ack()
        return bytes(self.data[start:start + n])

    def echo(self, message: bytes, timeout: float = 10.0) -> bytes:
        """Sends `message` and reads as many bytes back (against an echoing target)."""
        self.send(message)
        return self.read(len(message), timeout)

    def drop(self) -> None:
        self.leg.drop()
        self.leg = None

    def resume_request(self, token: str | None = None, secret: str | None = None,
                       session_id: str | None = None, with_route: bool = True, **kw) -> Leg:
        """Only the resume's upgrade (raises `Refused`); the `resume` exchange is `finish()`."""
        value = f"resume {session_id or self.id} {secret or self.secret}"
        extra = [(RESUME_HEADER, value)]
        if with_route and self.route is not None:
            extra.append((self.route_header, self.route))
        return Leg.connect(self.port, self.path, resume_headers(token or self.token, *extra), **kw)

    def stalled_resume(self, metric: Callable[[str], float], tries: int = 3) -> socket.socket:
        """A resume of this (parked) session that passes every check but whose 101 cannot be
        written, so that it stays in progress until the returned socket is closed (see
        `stall_a_101`: the 101 echoes a 60 kB subprotocol; one that gets through resumes the
        session, and the dropped socket parks it again). `metric` is `Sidecar.metric`."""
        parked = "wsgate_sessions_parked"
        if metric(parked) != 1:
            raise AssertionError("stalled_resume() needs the session parked (and no other)")
        upgrade = (f"GET {self.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: {'p' * 60_000}\r\nAuthorization: Bearer {self.token}\r\n"
                   f"{RESUME_HEADER}: resume {self.id} {self.secret}\r\n\r\n").encode()

        def settle() -> None:
            if not until(lambda: metric(parked) == 1, 5):
                raise AssertionError("the session did not park again after a resume was dropped")

        sock = stall_a_101(self.port, metric, upgrade, parked, settle, reset=True, tries=tries)
        if sock is not None:
            return sock
        raise AssertionError("no pipeline length stalled the resume's 101")

    def finish(self, leg: Leg, timeout: float = 10.0) -> int:
        """Exchanges `resume <received> <sent>` on `leg`, replays what the sidecar lacks; returns
        what the sidecar says it received."""
        if self.leg is not None:
            self.leg.sock.close()
        self.leg = leg
        leg.text(f"resume {len(self.data)} {len(self.sent)}")
        opcode, payload = leg.frame(timeout)
        words = payload.decode(errors="replace").split(" ")
        if (opcode != 0x1 or len(words) != 3 or words[0] != "resume"
                or not all(w.isascii() and w.isdigit() for w in words[1:])):
            raise AssertionError(f"the first message of a resumed leg is not `resume <n> <sent>`: {payload[:120]!r}")
        n, theirs = int(words[1]), int(words[2])
        if not 0 <= n <= len(self.sent):
            raise AssertionError(f"the sidecar says it received {n} bytes; {len(self.sent)} were sent")
        if theirs < len(self.data):
            raise AssertionError(f"the sidecar says it sent {theirs} bytes; {len(self.data)} were received")
        if n < len(self.sent):
            self._frames(bytes(self.sent[n:]))
        self.resumed_at.append(n)
        return n

    def resume(self, **kw) -> int:
        return self.finish(self.resume_request(**kw))
