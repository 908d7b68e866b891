"""Small client helpers for the e2e suite: raw HTTP/1.1 requests and an RFC 8441 HTTP/2 WebSocket.

Successful WebSocket sessions use real clients written by others (python `websockets`,
`websocket-client`); raw requests are for cases those clients refuse to send (two
`Sec-WebSocket-Protocol` lines, a hand-built SPDY upgrade); HTTP/2 WebSockets use `h2`, the only
client here that speaks extended CONNECT.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.settings

PREFIX = "base64url.bearer.authorization.k8s.io."


def bearer_entry(token: str | bytes) -> str:
    raw = token.encode() if isinstance(token, str) else token
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(
    port: int,
    path: str,
    headers: list[tuple[str, str]],
    *,
    tls_context: ssl.SSLContext | None = None,
    source: str | None = None,
) -> Reply:
    """One HTTP/1.1 GET with exactly these header lines (duplicates kept)."""
    kwargs = {"timeout": 10}
    if source:
        kwargs["source_address"] = (source, 0)
    if tls_context is not None:
        conn = http.client.HTTPSConnection("localhost", port, context=tls_context, **kwargs)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, **kwargs)
    try:
        skip_host = any(k.lower() == "host" for k, _ in headers)
        conn.putrequest("GET", path, skip_host=skip_host, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read() if r.status != 101 else b""
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        conn.close()


def upgrade_headers(test_id: str, *protocol_lines: str) -> list[tuple[str, str]]:
    h = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
        ("x-test-id", test_id),
    ]
    h += [("Sec-WebSocket-Protocol", line) for line in protocol_lines]
    return h


def _ws_frame(payload: bytes) -> bytes:
    """A masked, final text frame (client to server)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


@dataclass
class H2Result:
    status: int
    headers: dict[str, str]
    echoed: bytes | None
    # A refusal's body (the JSON reason), read to the end of the stream.
    body: bytes = b""

    def json(self):
        return json.loads(self.body)


def h2_websocket(
    port: int,
    tls_context: ssl.SSLContext,
    path: str,
    extra: list[tuple[str, str]],
    message: bytes = b"hello over h2",
) -> H2Result:
    """RFC 8441: CONNECT with `:protocol websocket` on an HTTP/2 stream, then one echo round trip.

    Sends no `Sec-WebSocket-Key` (RFC 8441 clients never do).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = tls_context.wrap_socket(sock, server_hostname="localhost")
    try:
        if s.selected_alpn_protocol() != "h2":
            raise AssertionError(f"ALPN picked {s.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        # Wait for the server's SETTINGS: extended CONNECT needs ENABLE_CONNECT_PROTOCOL.
        while conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) != 1:
            data = s.recv(65536)
            if not data:
                raise AssertionError("server closed before enabling extended CONNECT")
            conn.receive_data(data)
            s.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "localhost"),
                ("sec-websocket-version", "13"),
            ]
            + extra,
        )
        s.sendall(conn.data_to_send())
        status, headers, echoed, buf = 0, {}, None, b""

        def ended() -> H2Result:
            # A refusal's bytes are its body; an accepted stream's are WebSocket frames.
            return H2Result(status, headers, echoed, buf if status != 200 else b"")

        while True:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    headers = dict(ev.headers)
                    status = int(headers[":status"])
                    if status == 200:
                        conn.send_data(sid, _ws_frame(message))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    buf += ev.data
                    if status != 200:
                        continue
                    if len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
                        n = buf[1] & 0x7F
                        echoed = buf[2 : 2 + n]
                        return H2Result(status, headers, echoed)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    return ended()
            s.sendall(conn.data_to_send())
        return ended()
    finally:
        s.close()


__all__ = ["bearer_entry", "raw_request", "upgrade_headers", "h2_websocket", "Reply"]
