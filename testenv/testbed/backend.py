"""A recording backend: a real WebSocket server (python `websockets`) that remembers every request.

It stands in for what sits behind the gateway (the sidecar, the Kubernetes API, an app): tests
read what it received to check what the filter forwarded. Paths under `/redirect` answer 301, as
an upstream app that redirects an upgrade would; plain requests get 200 with the record as JSON;
upgrades are accepted (strictly: a missing `Sec-WebSocket-Key` is a 400, as upstream istio/istio#33534
describes) and echo every message.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from http import HTTPStatus

from websockets.asyncio.server import serve

# The subprotocols a Kubernetes API server speaks; the backend picks the first offered one.
K8S_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io"]


def _select_subprotocol(_connection, offered):
    """The first Kubernetes protocol offered, or none (plain WebSocket clients offer none)."""
    return next((p for p in offered if p in K8S_PROTOCOLS), None)


class RecordingBackend:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="backend", daemon=True)

    def start(self) -> "RecordingBackend":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("recording backend did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)

    def find(self, test_id: str, timeout: float = 5.0) -> dict | None:
        """The request that carried `x-test-id: test_id`, waiting up to `timeout` for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for r in self.records:
                    if r["test_id"] == test_id:
                        return r
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _record(self, request) -> dict:
        headers = [(k.lower(), v) for k, v in request.headers.raw_items()]
        rec = {
            "path": request.path,
            "headers": headers,
            "test_id": request.headers.get("x-test-id", ""),
        }
        with self._lock:
            self.records.append(rec)
        return rec

    async def _process_request(self, connection, request):
        rec = self._record(request)
        if request.path.startswith("/redirect"):
            response = connection.respond(HTTPStatus.MOVED_PERMANENTLY, "moved\n")
            response.headers["Location"] = "https://moved.example.com/new-home"
            return response
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            response = connection.respond(HTTPStatus.OK, json.dumps(rec))
            response.headers["Content-Type"] = "application/json"
            return response
        return None  # a real handshake, with all of websockets' checks

    async def _echo(self, ws) -> None:
        async for message in ws:
            await ws.send(message)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(
            self._echo,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            compression=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop
