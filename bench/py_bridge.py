#!/usr/bin/env python3
"""The Python bridge server for `make bench`: WebSocket (python `websockets`, asyncio) ↔ TCP
target, the way a Python SSH proxy server bridges (compression off, as it must be for encrypted
bytes). Its client side is testenv/tools/ws_stdio.py, modelled on SkyPilot's websocket_proxy.py.

    py_bridge.py LISTEN_PORT TARGET_HOST:TARGET_PORT
"""
from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import serve


async def main() -> None:
    port, target = int(sys.argv[1]), sys.argv[2]
    host, _, tport = target.rpartition(":")

    async def session(ws) -> None:
        reader, writer = await asyncio.open_connection(host, int(tport))

        async def up() -> None:
            async for msg in ws:
                writer.write(msg)
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(1 << 16):
                await ws.send(data)

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        writer.close()

    async with serve(session, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
