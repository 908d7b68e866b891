"""A chaos TCP proxy on loopback: forwards every connection to a target and breaks them on demand.

It stands where the network would fail in real life, between `wsgate proxy` and the gateway (or
the gateway and the sidecar), and breaks connections the ways a network does:

- `how="rst"`: an abortive close (`SO_LINGER` 0), the peer reads ECONNRESET, as after a NAT
  or load balancer drops its state, or a host reboots;
- `how="fin"`: an orderly shutdown, the peer reads EOF, as when a proxy closes an idle or
  draining connection; what the peer sends afterwards is read and thrown away;
- `side="both"` breaks both sockets of a connection at once; `side="client"` (or `"server"`)
  breaks that one and leaves the other open but silent for `hold` seconds before breaking it
  too: a half-dead path, where one end learns at once and the other only by its own means
  (a keepalive, a resume that takes the session over).

Cuts are made by `cut()`, by the random chaos of `chaos()` (every 0.2-1.5 s of transfer by
default, or after a random number of bytes in a random direction), and `down()` makes the
network refuse new connections (reset at once) until `up()`. Everything is counted: `cuts`,
`links_cut`, `accepted`, and per cut the time until a new connection carried data again
(`recovery_gaps()`: what "the network is back, data flows" costs the client).

The proxy runs its own asyncio loop in a thread, so pytest code calls it synchronously; use it
as a context manager. Each `random.Random` is seeded (`seed`), so a failing run can be replayed.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOWS = ("rst", "fin")
SIDES = ("both", "client", "server")


@dataclass
class Cut:
    """One cut event (every live connection broken at once, or one connection at its byte offset)."""

    at: float  # time.monotonic() of the cut
    how: str
    side: str
    links: int  # connections broken by it
    bytes_up: int  # client -> server bytes the broken connections had carried
    bytes_down: int


@dataclass
class _Link:
    """One accepted client connection and its connection to the target."""

    client: socket.socket
    server: socket.socket
    opened: float
    up: int = 0  # bytes forwarded client -> server
    down: int = 0  # bytes forwarded server -> client
    # When the connection had carried `flowing_bytes` (handshakes are smaller than that).
    flowing_at: float | None = None
    # A byte-offset cut: (direction, offset) where direction is "up" or "down".
    cut_at: tuple[str, int] | None = None
    pumps: list[asyncio.Task] = field(default_factory=list)  # one per direction, cancelled by a cut
    broken: bool = False  # cut, or ended by both sides
    ended: int = 0  # directions that ended with an orderly EOF


class ChaosProxy:
    """Forwards `127.0.0.1:<port>` to `target_host:target_port`.

    `rate`: bytes per second per direction per connection (None: as fast as the sockets go);
    a throttle keeps a loopback transfer slow enough for a number of cuts to land in it.
    `flowing_bytes`: bytes a connection must carry to count as "data flowing" (above TLS and
    WebSocket handshakes, so that a reconnect that fails early does not count).
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, rate: float | None = None,
                 flowing_bytes: int = 64 * 1024, seed: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.rate = rate
        self.flowing_bytes = flowing_bytes
        self.seed = seed if seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.port = 0
        self.accepted = 0
        self.refused = 0  # connections reset at once while the network was down()
        self.cut_log: list[Cut] = []
        self._links: list[_Link] = []  # every connection ever accepted (the log is small)
        self._down = False
        self._chaos: asyncio.Task | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        # The random chaos's settings while it runs (read by new connections for byte cuts).
        self._chaos_cfg: tuple | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "ChaosProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("chaos proxy did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)

    def __enter__(self) -> "ChaosProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        listener = socket.create_server(("127.0.0.1", 0), reuse_port=False)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        accepting = asyncio.create_task(self._accept(listener))
        self._ready.set()
        try:
            await self._stop
        finally:
            accepting.cancel()
            if self._chaos:
                self._chaos.cancel()
            for link in self._links:
                if not link.broken:
                    self._break(link, "rst", "both", 0.0)
            listener.close()
            await asyncio.sleep(0)

    def _call(self, fn, *args, timeout: float = 10.0):
        """Runs `fn(*args)` on the proxy's loop (a coroutine function or a plain one)."""
        async def run():
            r = fn(*args)
            return await r if asyncio.iscoroutine(r) else r
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    # --- what tests read ------------------------------------------------------------------------

    @property
    def cuts(self) -> int:
        """Cut events so far (each broke at least one connection)."""
        return len(self.cut_log)

    @property
    def links_cut(self) -> int:
        return sum(c.links for c in self.cut_log)

    def live(self) -> int:
        """Connections open right now."""
        return self._call(lambda: sum(1 for l in self._links if not l.broken))

    def recovery_gaps(self) -> list[float]:
        """For each cut, seconds until a connection opened after it carried `flowing_bytes`
        (cuts not yet followed by one are left out)."""
        def gaps() -> list[float]:
            out = []
            for c in self.cut_log:
                later = [l.flowing_at for l in self._links if l.opened >= c.at and l.flowing_at is not None]
                if later:
                    out.append(min(later) - c.at)
            return out
        return self._call(gaps)

    def flowing(self) -> bool:
        """Whether a live connection has carried data (past `flowing_bytes`)."""
        return self._call(lambda: any(not l.broken and l.flowing_at is not None for l in self._links))

    def wait_flowing(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.flowing():
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection through the chaos proxy carried data in {timeout} s")
            time.sleep(0.02)

    def bytes_forwarded(self) -> tuple[int, int]:
        """(client -> server, server -> client) bytes over every connection so far."""
        return self._call(lambda: (sum(l.up for l in self._links), sum(l.down for l in self._links)))

    # --- what tests do --------------------------------------------------------------------------

    def cut(self, how: str = "rst", side: str = "both", hold: float = 0.0) -> int:
        """Breaks every live connection now; returns how many it broke (0: no event is logged).
        `side` "client"/"server" breaks that socket first and the other one `hold` seconds later."""
        _check(how, side)
        return self._call(self._cut_all, how, side, hold)

    def down(self) -> None:
        """The network is gone: live connections are left alone (cut them first if needed), new
        ones are reset as soon as they are accepted."""
        self._call(lambda: setattr(self, "_down", True))

    def up(self) -> None:
        self._call(lambda: setattr(self, "_down", False))

    def start_chaos(self, every: tuple[float, float] | None = None,
                    after_bytes: tuple[int, int] | None = None, hows: tuple[str, ...] = HOWS,
                    sides: tuple[str, ...] = ("both",), hold: float = 0.0, max_cuts: int | None = None) -> None:
        """Random cuts until `stop_chaos()` (or `max_cuts`): with `every`, all live connections
        are broken after a random number of seconds *of transfer* (the clock runs from the moment
        a connection carries data); with `after_bytes`, each new connection is broken after a
        random number of bytes, in a random direction, in the middle of a chunk. Each cut picks
        its `how` among `hows` and its side among `sides`. Neither given: every 0.2-1.5 s."""
        for h in hows:
            for s in sides:
                _check(h, s)
        if every is not None and after_bytes is not None:
            raise ValueError("start_chaos: give every= or after_bytes=, not both")
        if every is None and after_bytes is None:
            every = (0.2, 1.5)

        def begin() -> None:
            self._chaos_cfg = (after_bytes, hows, sides, hold, max_cuts)
            self._chaos = asyncio.create_task(self._timed_chaos(every, hows, sides, hold, max_cuts)) if every else None
        self._call(begin)

    def stop_chaos(self) -> None:
        def end() -> None:
            self._chaos_cfg = None
            if self._chaos:
                self._chaos.cancel()
                self._chaos = None
        self._call(end)

    @contextlib.contextmanager
    def chaos(self, **kw):
        """`with proxy.chaos(every=(0.2, 1.5)): ...`: random cuts inside the block only."""
        self.start_chaos(**kw)
        try:
            yield self
        finally:
            self.stop_chaos()

    # --- inside the loop ------------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            if self._down:
                self.refused += 1
                _reset(client)
                continue
            self.accepted += 1
            asyncio.create_task(self._connect(client))

    async def _connect(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket()
        server.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(server, self.target), 5)
        except (OSError, asyncio.TimeoutError):
            server.close()
            _reset(client)
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, server, time.monotonic())
        if self._chaos_cfg and self._chaos_cfg[0]:
            lo, hi = self._chaos_cfg[0]
            link.cut_at = (self.rng.choice(("up", "down")), self.rng.randint(lo, hi))
        self._links.append(link)
        link.pumps = [asyncio.create_task(self._pump(link, "up")), asyncio.create_task(self._pump(link, "down"))]

    async def _pump(self, link: _Link, direction: str) -> None:
        loop = asyncio.get_running_loop()
        src, dst = (link.client, link.server) if direction == "up" else (link.server, link.client)
        try:
            while True:
                data = await loop.sock_recv(src, 65536)
                if not data:
                    # An orderly end from one side is passed on as one (half-close); once both
                    # sides have ended, the connection is over.
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    link.ended += 1
                    if link.ended == 2:
                        link.broken = True
                        for s in (link.client, link.server):
                            _release(s)
                            s.close()
                    return
                done = getattr(link, direction)
                offset = link.cut_at[1] if link.cut_at and link.cut_at[0] == direction else None
                if offset is not None and done + len(data) >= offset:
                    data = data[: max(0, offset - done)]
                if data:
                    await loop.sock_sendall(dst, data)
                    setattr(link, direction, done + len(data))
                    if link.flowing_at is None and link.up + link.down >= self.flowing_bytes:
                        link.flowing_at = time.monotonic()
                if offset is not None and getattr(link, direction) >= offset:
                    self._cut_one(link)
                    return
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
        except OSError:
            # One side failed: the other learns it the same way (a reset).
            if not link.broken:
                self._break(link, "rst", "both", 0.0)

    def _cut_one(self, link: _Link) -> None:
        _, hows, sides, hold, max_cuts = self._chaos_cfg or (None, HOWS, ("both",), 0.0, None)
        if max_cuts is not None and self.cuts >= max_cuts:
            link.cut_at = None
            return
        how, side = self.rng.choice(hows), self.rng.choice(sides)
        self.cut_log.append(Cut(time.monotonic(), how, side, 1, link.up, link.down))
        self._break(link, how, side, hold)

    def _cut_all(self, how: str, side: str, hold: float) -> int:
        live = [l for l in self._links if not l.broken]
        if live:
            self.cut_log.append(Cut(time.monotonic(), how, side, len(live),
                                    sum(l.up for l in live), sum(l.down for l in live)))
        for link in live:
            self._break(link, how, side, hold)
        return len(live)

    async def _timed_chaos(self, every, hows, sides, hold, max_cuts) -> None:
        while max_cuts is None or self.cuts < max_cuts:
            # The clock runs while data flows: wait for a connection that carries some.
            while not any(not l.broken and l.flowing_at is not None for l in self._links):
                await asyncio.sleep(0.01)
            await asyncio.sleep(self.rng.uniform(*every))
            self._cut_all(self.rng.choice(hows), self.rng.choice(sides), hold)

    def _break(self, link: _Link, how: str, side: str, hold: float) -> None:
        link.broken = True
        current = asyncio.current_task()
        for t in link.pumps:
            if t is not current:
                t.cancel()
        first = {"both": [link.client, link.server], "client": [link.client], "server": [link.server]}[side]
        for s in first:
            self._close(s, how)
        rest = [s for s in (link.client, link.server) if s not in first]
        if rest:
            # The other end stays open and silent (nothing read, nothing sent) for `hold` seconds.
            asyncio.get_running_loop().call_later(hold, lambda: [self._close(s, how) for s in rest])

    def _close(self, s: socket.socket, how: str) -> None:
        if s.fileno() < 0:
            return
        if how == "rst":
            _reset(s)
            return
        # FIN: the peer reads EOF. Closing a socket with unread bytes would send a reset instead,
        # so read and drop whatever the peer still sends until it closes (at most 5 s).
        _release(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        asyncio.get_running_loop().create_task(_discard_then_close(s, 5.0))


def _check(how: str, side: str) -> None:
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, not {how!r}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")


def _release(s: socket.socket) -> None:
    """Unregisters `s` from the loop before it is closed: a cancelled `sock_recv` would otherwise
    unregister its fd number later, when it may already belong to a new connection."""
    if s.fileno() >= 0:
        loop = asyncio.get_running_loop()
        loop.remove_reader(s.fileno())
        loop.remove_writer(s.fileno())


def _reset(s: socket.socket) -> None:
    """Closes `s` abortively: the kernel sends RST, the peer reads ECONNRESET."""
    _release(s)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def _discard_then_close(s: socket.socket, limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while loop.time() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(s, 65536), deadline - loop.time())
            if not data:
                break
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        _release(s)
        s.close()
