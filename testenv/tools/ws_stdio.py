#!/usr/bin/env python3
"""A small WebSocket stdio client for ssh's ProxyCommand, used by the tests (python `websockets`).

Modelled on SkyPilot's `websocket_proxy.py`, without its `sky` imports: stdin → binary frames,
frames → stdout; `--typed` adds SkyPilot's type byte (0 = data) and drops ping echoes.

    ssh -o ProxyCommand='ws_stdio.py wss://gw/kubernetes-pod-ssh-proxy?cluster_name=c --token T' host
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import sys

from websockets.asyncio.client import connect


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--token", help="sent as Authorization: Bearer")
    p.add_argument("--subprotocol-token", help="sent as a Kubernetes subprotocol entry")
    p.add_argument("--cafile")
    p.add_argument("--typed", action="store_true", help="SkyPilot type-byte framing")
    a = p.parse_args()
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    protocols = None
    if a.subprotocol_token:
        enc = base64.urlsafe_b64encode(a.subprotocol_token.encode()).decode().rstrip("=")
        protocols = [f"base64url.bearer.authorization.k8s.io.{enc}", "v4.channel.k8s.io"]
    ctx = ssl.create_default_context(cafile=a.cafile) if a.url.startswith("wss") else None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, proto, None, loop)
    async with connect(
        a.url,
        additional_headers=headers,
        subprotocols=protocols,
        ssl=ctx,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=20,
    ) as ws:

        async def up() -> None:
            while data := await reader.read(1 << 16):
                await ws.send(b"\x00" + data if a.typed else data)
            await ws.close()

        async def down() -> None:
            async for msg in ws:
                if a.typed:
                    if msg[:1] != b"\x00":
                        continue
                    msg = msg[1:]
                writer.write(msg)
                await writer.drain()

        done, pending = await asyncio.wait(
            [asyncio.ensure_future(up()), asyncio.ensure_future(down())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for t in pending:
            t.cancel()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception as e:  # one line on stderr, as ssh shows it
        print(f"ws_stdio: {e}", file=sys.stderr)
        sys.exit(1)
