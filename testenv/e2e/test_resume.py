"""Resumable sessions end to end (docs/resume.md), with the real pieces: `ssh`/`scp` → `wsgate
proxy` (release binary) → the real Envoy with the filter → `wsgate-sidecar` → a throwaway
`sshd`, and the network failing in between the ways it does in production:

- Envoy SIGKILLed mid-copy and started again on the same ports (a gateway pod replaced);
- Envoy's listener replaced by a push, which is what closes live WebSockets on a running Envoy
  (measured here: `drain_listeners` alone leaves upgraded connections open, see the first test);
- a chaos proxy between the client and Envoy resetting or half-closing the connection at random;
- two sidecar replicas behind Envoy's stateful session filter, the resume routed back by the
  header the first 101 carried.

Where the test must do what `wsgate proxy` never does (a wrong secret, another user's token, two
resumes at once, a client that never reads), a hand-written client of the protocol
(testbed/resume.py) talks to the sidecar, in front of a target that echoes or floods
(testbed/targets.py) so that the target's side of a session can be seen.

Every wait is bounded; figures (time from the network back to data flowing, memory of stalled
sessions) are printed (`pytest -s` shows them).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from clients import raw_request, upgrade_headers
from testbed.backend import RecordingBackend
from testbed.chaos import ChaosProxy
from testbed.envoy import Gateway
from testbed.procfs import descendants
from testbed.resume import RESUME_HEADER, Closed, Leg, Refused, Session
from testbed.sidecar import ALICE, BOB, NORMAL_ENDS, Sidecar, standard_args
from testbed.sshd import Sshd
from testbed.targets import TcpTarget
from testbed.wsgate import WSGATE, proxy_command

ROUTES = [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
           "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]}]
ROUTE_HEADER = "x-wsgate-route"
MIB = 1 << 20
# The client's exit code when it gives up resuming (docs/resume.md).
GAVE_UP = 16
LOST = "wsgate: connection lost"
RESUMED = re.compile(r"wsgate: resumed after (\d+(?:\.\d+)?) ?s")


# --- Fixtures: a fresh sidecar and gateway per test (its own audit lines and counters) -------------


@pytest.fixture
def make_sidecar(workdir, sshd, request):
    """`make_sidecar(*flags, target=...)`: a sidecar (standard identities; resumption as it
    ships, on) in front of `target` (default: the suite's sshd); stopped after the test, its
    log printed if the test failed."""
    started: list[Sidecar] = []

    def make(*extra: str, target: int | None = None) -> Sidecar:
        name = f"rs-{request.node.name[:40]}-{len(started)}-{uuid.uuid4().hex[:6]}"
        args = standard_args(workdir, f"127.0.0.1:{target or sshd.port}", *extra)
        sc = Sidecar(workdir / re.sub(r"[^\w.-]", "_", name), args).start()
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.stop()
        if request.session.testsfailed:
            sys.stderr.write(f"\n===== sidecar log {sc.workdir.name} =====\n{sc.log()[-6000:]}\n")


@pytest.fixture
def make_gateway(workdir, tls, request):
    """`make_gateway(sidecar_port, **Gateway options)`: Envoy with the filter in front of it."""
    started: list[Gateway] = []

    def make(port: int, **kw) -> Gateway:
        name = f"rs-gw-{len(started)}-{uuid.uuid4().hex[:6]}"
        g = Gateway(workdir / name, json.dumps({"routes": ROUTES}), port, tls, **kw).start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()
        assert not g.vm_crashes(), g.vm_crashes()
        if request.session.testsfailed:
            sys.stderr.write(f"\n===== envoy log {g.workdir.name} =====\n{g.log()[-6000:]}\n")


# --- Helpers --------------------------------------------------------------------------------------


def wait_for(what: str, check, timeout: float = 10.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def random_file(path: Path, mib: int) -> str:
    """`mib` MiB of random bytes at `path`; returns their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            block = os.urandom(MIB)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def https(port: int) -> str:
    return f"https://localhost:{port}"


def px(tls, url: str, *flags: str) -> str:
    return proxy_command(url, "prod", "--ca-file", str(tls.ca_pem), *flags)


def env() -> dict:
    return {**os.environ, "WSGATE_TOKEN": ALICE}


class Lines:
    """Reads a process's stream line by line in a thread; `next()` and `wait()` are bounded."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue[bytes] = queue.Queue()
        self.seen: list[bytes] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self.q.put(line)
        self.q.put(b"")

    def next(self, timeout: float = 30.0) -> bytes:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line in {timeout} s; so far: {self.text()!r}") from None
        self.seen.append(line)
        return line

    def wait(self, needle: str, timeout: float = 30.0) -> str:
        """The first line (from now on) containing `needle`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if needle.encode() in line:
                return line.decode(errors="replace")
            if line == b"":
                raise AssertionError(f"stream ended without {needle!r}: {self.text()!r}")

    def text(self) -> str:
        while True:
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                return b"".join(self.seen).decode(errors="replace")


def resumed_after(stderr: str) -> list[float]:
    return [float(x) for x in RESUMED.findall(stderr)]


def one_session_end(sc: Sidecar) -> dict:
    """The session's single `session_end` line: waits for it, then checks no second one follows."""
    (end,) = wait_for("the session_end audit line", lambda: sc.audit("session_end"), timeout=15)
    time.sleep(0.5)
    ends = sc.audit("session_end")
    assert len(ends) == 1, f"one session, {len(ends)} session_end lines: {ends}"
    return end


def scp_command(sshd: Sshd, proxy: str, src: str, dst: str, *flags: str) -> list[str]:
    return ["scp", "-q", *flags, *sshd.ssh_command(proxy)[1:-1], src, dst]


# --- The test bed itself: what Envoy does to a live WebSocket -------------------------------------


def test_envoy_closes_live_websockets_when_a_listener_is_replaced_or_envoy_dies_not_on_drain_listeners(
        workdir, tls, backend):
    """Pins the behaviour the resumption tests rely on (Envoy 1.40, measured): `POST
    /drain_listeners?graceful` stops new connections after the drain time but never closes an
    upgraded one; replacing the listener (a push) closes it with a FIN when the drain time is
    over; SIGKILL closes it at once; a restarted Envoy serves on the same port."""
    def ws(port: int) -> Leg:
        return Leg.connect(port, "/kubernetes-pod-ssh-proxy?cluster_name=prod", [("x-test-id", "drain")])

    def alive(leg: Leg) -> bool:
        leg.binary(b"ping")
        return leg.frame(5) == (0x2, b"ping")

    def ends(leg: Leg, within: float) -> float:
        started = time.monotonic()
        with pytest.raises(Closed) as e:
            while time.monotonic() - started < within:
                alive(leg)
                time.sleep(0.1)
        assert e.value.code is None, "Envoy sent a close frame: it only ever closes the TCP connection"
        return time.monotonic() - started

    common = dict(http_filters=[], require_tls=False, drain_seconds=1)
    static = Gateway(workdir / "rs-drain-static", "{}", backend.port, tls, drain_strategy="immediate", **common)
    with static as gw:
        leg = ws(gw.ports["plaintext"])
        gw.drain_listeners(graceful=True)
        time.sleep(3)
        assert alive(leg), "drain_listeners closed an upgraded connection"
        with pytest.raises(ConnectionRefusedError):
            ws(gw.ports["plaintext"])
        leg.close()

    with Gateway(workdir / "rs-drain-lds", "{}", backend.port, tls, dynamic=True, **common) as gw:
        leg = ws(gw.ports["plaintext"])
        gw.roll_listeners()
        rolled = time.monotonic()
        fresh = ws(gw.ports["plaintext"])
        assert alive(fresh), "the new listener does not serve during the drain"
        fresh.close()
        ends(leg, within=10)
        took = time.monotonic() - rolled
        print(f"\nlistener replaced: the live WebSocket ended {took:.2f} s later (drain time {gw.drain_seconds} s)")
        assert gw.drain_seconds - 0.5 < took < gw.drain_seconds + 5, took

        leg = ws(gw.ports["plaintext"])
        port = gw.ports["plaintext"]
        gw.kill()
        assert ends(leg, within=5) < 1
        gw.restart()
        assert gw.ports["plaintext"] == port
        fresh = ws(port)
        assert alive(fresh)
        fresh.close()


def test_chaos_proxy_breaks_connections_the_way_it_says(tmp_path):
    """The chaos proxy's cuts are what the tests claim: a reset is read as ECONNRESET, a FIN as
    EOF, a one-sided cut leaves the other end silent for `hold` seconds; random cuts are counted."""
    with TcpTarget("echo") as target, ChaosProxy(target.port, seed=7) as chaos:
        def connected():
            s = socket.create_connection(("127.0.0.1", chaos.port), timeout=5)
            s.sendall(b"x" * 1000)
            assert read_sock(s, 1000) == b"x" * 1000
            return s

        for how, seen in (("rst", "reset"), ("fin", "EOF")):
            for side, hold in (("both", 0.0), ("client", 0.5), ("server", 0.5)):
                s = connected()
                started = time.monotonic()
                assert chaos.cut(how, side, hold) == 1
                assert what_ends(s) == seen, (how, side)
                took = time.monotonic() - started
                # The client's end learns at once unless only the server's was cut.
                assert (took >= hold - 0.05) if side == "server" else (took < 0.3), (how, side, took)
                s.close()
        assert chaos.cuts == 6 and chaos.links_cut == 6

        with chaos.chaos(after_bytes=(5000, 5000)):
            s = connected()
            with pytest.raises(OSError):
                for _ in range(100):
                    s.sendall(b"y" * 1000)
                    read_sock(s, 1000)
            s.close()
        assert chaos.cuts == 7 and chaos.cut_log[-1].bytes_up + chaos.cut_log[-1].bytes_down >= 5000
        chaos.down()
        with pytest.raises(OSError):
            read_sock(socket.create_connection(("127.0.0.1", chaos.port), timeout=5), 1)
        chaos.up()
        connected().close()
        wait_for("the echo target to see every connection go", lambda: target.open_now() == 0, timeout=10)


def read_sock(s, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionAbortedError("EOF")
        out += chunk
    return out


def what_ends(s) -> str:
    """How a connection ends, from its client's side: "reset" or "EOF"."""
    try:
        return "EOF" if s.recv(1) == b"" else "data"
    except ConnectionResetError:
        return "reset"


def test_stateful_session_header_routes_back_to_the_replica_that_answered(workdir, tls):
    """Envoy's stateful session filter in header mode, after the wsgate filter as Istio places
    it: the 101 (and a 200) names the chosen replica in `x-wsgate-route`; a request carrying it
    reaches that replica every time; a forged value falls back to load balancing."""
    a, b = RecordingBackend().start(), RecordingBackend().start()
    try:
        with Gateway(workdir / "rs-sticky", json.dumps({"routes": ROUTES}), a.port, tls, replica_ports=(b.port,),
                     session_header=ROUTE_HEADER) as gw:
            ctx = tls.client_context()
            path = "/kubernetes-pod-ssh-proxy?cluster_name=prod"

            def ask(*extra: tuple[str, str], upgrade: bool = True):
                tid = uuid.uuid4().hex
                heads = upgrade_headers(tid) if upgrade else [("x-test-id", tid)]
                r = raw_request(gw.ports["tls"], path, heads + list(extra), tls_context=ctx)
                where = wait_for("the request at a replica",
                                 lambda: "a" if a.find(tid, 0) else "b" if b.find(tid, 0) else None, timeout=5)
                return r, where

            owners = set()
            for upgrade in (True, False):
                for _ in range(4):
                    first, owner = ask(upgrade=upgrade)
                    assert first.status == (101 if upgrade else 200)
                    route = first.headers.get(ROUTE_HEADER)
                    assert route, f"no {ROUTE_HEADER} in {first.headers}"
                    owners.add(owner)
                    for _ in range(4):
                        again, where = ask((ROUTE_HEADER, route), upgrade=upgrade)
                        assert (again.status, where) == (first.status, owner)
            assert owners == {"a", "b"}, "round robin should have used both replicas"
            # A forged or unknown value: load balancing as usual, and a fresh header to use.
            r, where = ask((ROUTE_HEADER, "bm90LWEtcmVwbGljYTo5"))
            assert r.status == 101 and where in ("a", "b") and r.headers.get(ROUTE_HEADER)
    finally:
        a.stop()
        b.stop()


# --- Envoy killed mid-copy ------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_envoy_sigkilled_mid_scp_and_started_again_the_copy_completes(
        sshd, tls, tmp_path, make_sidecar, make_gateway, direction):
    sc = make_sidecar()
    gw = make_gateway(sc.port)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    want = random_file(src, 64)
    remote = f"{sshd.user}@wsgate-target:"
    ends = (str(src), remote + str(dst)) if direction == "upload" else (remote + str(src), str(dst))
    # -l: 160 Mbit/s, so that the copy is surely under way when Envoy dies, even on a fast machine.
    cmd = scp_command(sshd, px(tls, https(gw.ports["tls"]), "--resume-timeout", "60s"), *ends, "-l", "160000")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    try:
        wait_for("8 MiB copied", lambda: size(dst) >= 8 * MIB or p.poll() is not None, timeout=60)
        assert p.poll() is None, p.stderr.read().decode()
        gw.kill()
        # The network stays down a while: the client's first attempts find nothing listening.
        time.sleep(1.0)
        assert p.poll() is None, "ssh saw an error instead of a pause"
        at_kill = size(dst)
        gw.restart()
        back = time.monotonic()
        wait_for("data to flow again", lambda: size(dst) > at_kill, timeout=60, every=0.005)
        flowing = time.monotonic() - back
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode(errors="replace")
    assert p.returncode == 0, err
    assert sha256_file(dst) == want
    assert LOST in err and "resuming session" in err, err
    gaps = resumed_after(err)
    assert gaps, err
    end = one_session_end(sc)
    assert end["close_reason"] in NORMAL_ENDS and end["user"] == "alice"
    resumed = sc.audit("session_resumed")
    assert resumed and resumed[0]["user"] == "alice", resumed
    assert sc.metric('wsgate_resumes_total{result="ok"}') >= 1
    assert sc.metric("wsgate_sessions_parked") == 0
    print(f"\n{direction}: Envoy back → data flowing again in {flowing:.2f} s; "
          f"the client said: resumed after {gaps} s")


# --- The listener drained mid-session -------------------------------------------------------------


def test_listener_drained_mid_interactive_session_the_next_command_runs(sshd, tls, make_sidecar, make_gateway):
    sc = make_sidecar()
    gw = make_gateway(sc.port, dynamic=True, drain_seconds=2)
    p = subprocess.Popen(sshd.ssh_command(px(tls, https(gw.ports["tls"])), "sh"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    try:
        out, err = Lines(p.stdout), Lines(p.stderr)
        p.stdin.write(b"echo before\n")
        p.stdin.flush()
        assert out.next() == b"before\n"
        gw.roll_listeners()
        err.wait(LOST, timeout=gw.drain_seconds + 10)
        # Typed while the leg is down: it waits in the client and runs once the session is back.
        p.stdin.write(b"echo after the drain $((6 * 7))\n")
        p.stdin.flush()
        assert out.next() == b"after the drain 42\n"
        err.wait("wsgate: resumed after", timeout=5)
        p.stdin.close()
        assert p.wait(30) == 0, err.text()
    finally:
        if p.poll() is None:
            p.kill()
    assert one_session_end(sc)["close_reason"] in NORMAL_ENDS
    assert len(sc.audit("session_resumed")) >= 1


# --- A chaotic network ----------------------------------------------------------------------------


def test_chaos_proxy_cutting_many_times_during_32_mib_each_way(sshd, tls, tmp_path, make_sidecar, make_gateway):
    sc = make_sidecar()
    gw = make_gateway(sc.port)
    up_src, up_dst = tmp_path / "up-src.bin", tmp_path / "up-dst.bin"
    down_src, down_dst = tmp_path / "down-src.bin", tmp_path / "down-dst.bin"
    want_up, want_down = random_file(up_src, 32), random_file(down_src, 32)
    # 4 MiB/s each way: 32 MiB take 8 s or more, long enough for cuts every 0.2-1.5 s of transfer.
    with ChaosProxy(gw.ports["tls"], rate=4 * MIB) as chaos:
        # Both directions at once in one session: stdin to a file, a file to stdout.
        remote = f"exec 3<&0; cat <&3 > {up_dst} & cat {down_src}; wait"
        cmd = sshd.ssh_command(px(tls, https(chaos.port), "--resume-timeout", "60s"), remote)
        print(f"\nchaos seed {chaos.seed}")
        with open(up_src, "rb") as stdin, open(down_dst, "wb") as stdout:
            with chaos.chaos(every=(0.2, 1.5), hows=("rst", "fin"), sides=("both", "client", "server"), hold=0.3):
                r = subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env(), timeout=600)
        err = r.stderr.decode(errors="replace")
        gaps = chaos.recovery_gaps()
        assert r.returncode == 0, err
        assert sha256_file(up_dst) == want_up
        assert sha256_file(down_dst) == want_down
        assert chaos.cuts >= 5, f"only {chaos.cuts} cuts: the test did not test much"
        said = resumed_after(err)
        assert len(said) >= chaos.cuts - 1, (chaos.cuts, err)
        up, down = chaos.bytes_forwarded()
        print(f"{chaos.cuts} cuts ({[(c.how, c.side) for c in chaos.cut_log]}); "
              f"cut → data flowing again: median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s; "
              f"client's figures {said}; bytes through the proxy {up / MIB:.1f} MiB up, {down / MIB:.1f} MiB down")
    end = one_session_end(sc)
    assert end["close_reason"] in NORMAL_ENDS
    resumed = sc.audit("session_resumed")
    assert len(resumed) >= 5
    # Each resume audits what was sent again each way; with both directions busy, some of it
    # was in flight each way when a cut came. The session's end sums them.
    both = [(r.get("bytes_replayed"), r.get("bytes_replayed_by_client")) for r in resumed]
    assert any(down for down, _ in both) and any(up for _, up in both), both
    assert end["bytes_replayed_by_client"] == sum(up or 0 for _, up in both), (end, both)
    assert sc.metric("wsgate_resume_replayed_by_client_bytes_total") == end["bytes_replayed_by_client"]
    assert sc.metric("wsgate_resume_replayed_bytes_total") == end["bytes_replayed"]


# --- Two replicas behind the stateful session -----------------------------------------------------


def test_two_replicas_the_resume_lands_on_the_one_holding_the_session(
        sshd, tls, tmp_path, make_sidecar, make_gateway):
    replicas = [make_sidecar(), make_sidecar()]
    gw = make_gateway(replicas[0].port, replica_ports=(replicas[1].port,), session_header=ROUTE_HEADER)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    want = random_file(src, 16)
    with ChaosProxy(gw.ports["tls"], rate=4 * MIB) as chaos:
        cmd = sshd.ssh_command(px(tls, https(chaos.port), "--resume-timeout", "60s"), f"cat {src}")
        with open(dst, "wb") as stdout:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, env=env())
            try:
                for i in range(3):
                    wait_for("data flowing", lambda: chaos.flowing() or p.poll() is not None, timeout=30)
                    if p.poll() is not None:
                        break  # the client gave up: its stderr says why, below
                    time.sleep(0.3)
                    assert chaos.cut("rst") == 1
                    wait_for(f"resume {i + 1}", lambda: sum(len(sc.audit("session_resumed")) for sc in replicas) > i
                             or p.poll() is not None, timeout=30)
                _, err = p.communicate(timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
    assert p.returncode == 0, err.decode(errors="replace")
    assert sha256_file(dst) == want
    (owner,) = [sc for sc in replicas if sc.audit("session_start")]
    (other,) = [sc for sc in replicas if sc is not owner]
    assert len(owner.audit("session_resumed")) == 3
    assert not other.audit("session_resumed") and not other.audit("resume_refused")
    assert one_session_end(owner)["close_reason"] in NORMAL_ENDS


# --- Refusals -------------------------------------------------------------------------------------


def refused(fn) -> tuple[int, str]:
    with pytest.raises(Refused) as e:
        fn()
    return e.value.status, e.value.reason


def reasons(sc: Sidecar) -> list[str]:
    return [e.get("reason") for e in sc.audit("resume_refused")]


def test_resume_refusals_change_nothing_for_a_live_or_a_parked_session(make_sidecar):
    """Wrong secret (404), unknown id (404), another user (403), a second resume while one is
    under way (409): each refused with the documented status and audit reason, and the session,
    live or parked, carries on. The target is an echo server, so "carries on" is a round trip."""
    with TcpTarget("echo") as target:
        sc = make_sidecar(target=target.port)
        # Alice may reach every cluster, Bob only dev: a session on dev lets Bob pass the
        # authorization policy, so that only the resume's same-user check can stop him.
        s = Session.open(sc.port, "/ssh/dev", ALICE)
        assert s.echo(b"hello") == b"hello"

        def bad_refusals(state: str) -> None:
            assert refused(lambda: s.resume_request(secret="0" * 32)) == (404, "resume_unknown"), state
            assert refused(lambda: s.resume_request(session_id="f" * 32)) == (404, "resume_unknown"), state
            assert refused(lambda: s.resume_request(token=BOB)) == (403, "resume_forbidden"), state
            assert refused(lambda: s.resume_request(token="sky_nobody")) [0] == 401, state

        bad_refusals("live")
        assert s.echo(b"still live") == b"still live"
        assert target.open_now() == 1

        s.drop()
        wait_for("the session to be parked", lambda: sc.metric("wsgate_sessions_parked") == 1)
        bad_refusals("parked")
        assert target.open_now() == 1 and sc.metric("wsgate_sessions_parked") == 1

        # A resume under way (past its checks, its 101 not yet through) holds the session: a
        # second one is refused; once the first gives up, the session is still there to resume.
        stalled = s.stalled_resume(sc.metric)
        assert refused(lambda: s.resume_request()) == (409, "resume_conflict")
        stalled.close()
        wait_for("the stalled resume to give up",
                 lambda: sc.metric('wsgate_handshake_failures_total{reason="upgrade_failed"}') >= 1)
        assert sc.metric("wsgate_sessions_parked") == 1 and target.open_now() == 1
        assert s.resume() == len(s.sent)
        assert s.echo(b"back") == b"back"

        # A resume is authenticated as a new session is: a bad token is refused (and audited)
        # before any resume check.
        assert reasons(sc)[:8] == ["resume_bad_secret", "resume_unknown", "resume_forbidden", "invalid_credentials"] * 2
        assert "resume_conflict" in reasons(sc)
        for result, n in (("bad_secret", 2), ("unknown", 2), ("forbidden", 2), ("conflict", 1)):
            assert sc.metric(f'wsgate_resumes_total{{result="{result}"}}') == n, result
        # Finding how to stall a 101 may have let some resumes through on the way.
        assert sc.metric('wsgate_resumes_total{result="ok"}') >= 1
        assert all(r["user"] == "alice" for r in sc.audit("session_resumed"))
        assert ALICE not in sc.log() and BOB not in sc.log() and s.secret not in sc.log()
        s.leg.close()
        assert one_session_end(sc)["close_reason"] == "client_closed"
        assert target.wait_open(0) == 0


def test_resume_past_the_window_is_404_and_the_target_connection_was_closed(make_sidecar):
    with TcpTarget("echo") as target:
        sc = make_sidecar("--resume-window", "1s", target=target.port)
        s = Session.open(sc.port, "/ssh/prod", ALICE)
        assert s.echo(b"x" * 1000) == b"x" * 1000
        s.drop()
        dropped = time.monotonic()
        time.sleep(0.3)
        assert target.open_now() == 1, "the target connection should be parked, not closed, within the window"
        assert target.wait_open(0, timeout=10) == 0
        freed = time.monotonic() - dropped
        assert 0.9 < freed < 5, freed
        assert refused(lambda: s.resume_request()) == (404, "resume_unknown")
        end = one_session_end(sc)
        assert end["close_reason"] == "resume_expired"
        assert json.loads(sc.admin("/sessions")[1]) == []
        assert sc.metric("wsgate_sessions_parked") == 0
        print(f"\nwindow 1 s: the parked target connection was closed {freed:.2f} s after the drop")


# --- Limits ---------------------------------------------------------------------------------------


def read_exactly(stream, n: int, timeout: float = 30.0) -> bytes:
    """`n` bytes from a process's pipe, or an error after `timeout` (never a hang)."""
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"only {out!r} in {timeout} s")
        chunk = os.read(stream.fileno(), n - len(out))
        if not chunk:
            raise AssertionError(f"the stream ended after {out!r}")
        out += chunk
    return out


def wsgate_proxy(tls, url: str, *flags: str) -> subprocess.Popen:
    """`wsgate proxy` on its own (no ssh): its exit code and stderr are the test's to read."""
    return subprocess.Popen([str(WSGATE), "proxy", url, "prod", "--ca-file", str(tls.ca_pem), *flags],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())


def test_client_back_after_the_window_is_refused_exit_16_and_sshd_was_freed(sshd, tls, make_sidecar, make_gateway):
    """Envoy dies and stays down longer than the sidecar's window. The sidecar closes its sshd
    connection when the window ends (sshd's process for it goes away); when Envoy is back the
    resume is refused and `wsgate proxy` says so and exits 16."""
    sc = make_sidecar("--resume-window", "2s")
    gw = make_gateway(sc.port)
    before = set(descendants(sshd.proc.pid))
    p = wsgate_proxy(tls, https(gw.ports["tls"]), "--resume-timeout", "60s")
    try:
        assert read_exactly(p.stdout, 8) == b"SSH-2.0-"  # sshd's banner: the session is up
        assert set(descendants(sshd.proc.pid)) - before, "no sshd process for the session"
        gw.kill()
        killed = time.monotonic()
        wait_for("sshd's process for the session to end when the window is over",
                 lambda: set(descendants(sshd.proc.pid)) <= before, timeout=15)
        freed = time.monotonic() - killed
        assert one_session_end(sc)["close_reason"] == "resume_expired"
        gw.restart()
        code = p.wait(30)
        err = p.stderr.read().decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
    assert code == GAVE_UP, err
    lines = err.splitlines()
    assert LOST in lines[0] and lines[-1].startswith("wsgate: ") and "resumed after" not in err, err
    # The window ran out (expired), then the client's resume found nothing (unknown).
    assert sc.metric('wsgate_resumes_total{result="expired"}') == 1
    assert sc.metric('wsgate_resumes_total{result="unknown"}') == 1
    assert sc.metric("wsgate_sessions_parked") == 0
    print(f"\nwindow 2 s: sshd's process for the session ended {freed:.2f} s after Envoy died")


def test_resume_timeout_reached_exits_16(tls, make_sidecar, make_gateway):
    """The gateway never comes back within --resume-timeout: the client gives up, exit 16."""
    sc = make_sidecar()
    gw = make_gateway(sc.port)
    p = wsgate_proxy(tls, https(gw.ports["tls"]), "--resume-timeout", "2s")
    try:
        assert read_exactly(p.stdout, 8) == b"SSH-2.0-"
        gw.kill()
        killed = time.monotonic()
        code = p.wait(30)
        took = time.monotonic() - killed
        err = p.stderr.read().decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
    assert code == GAVE_UP, err
    lines = err.splitlines()
    assert LOST in lines[0] and lines[-1].startswith("wsgate: ") and len(lines) <= 3, err
    assert 1.5 < took < 10, took
    # The sidecar still holds the session for its window (the client gave up, it cannot know).
    assert sc.metric("wsgate_sessions_parked") == 1


def test_stalled_clients_cannot_grow_the_sidecars_memory(workdir, make_sidecar):
    """Sessions that negotiate resumption, then never read nor acknowledge while the target
    floods: the sidecar keeps at most --replay-buffer unacknowledged bytes per session, then stops
    reading the target, so its RSS grows by less than sessions x (buffer + 2 reads + slack)."""
    # read: the sidecar's read size (--ws-read-buffer, 256 KiB by default), for either side.
    sessions, buffer, read, slack = 20, 1 * MIB, 256 * 1024, 256 * 1024
    with TcpTarget("flood") as target:
        sc = make_sidecar("--replay-buffer", str(buffer), target=target.port)
        # One session first, so that what every session costs (runtime, allocator arenas) is in the
        # baseline and what is measured is what stalled sessions hold.
        s = Session.open(sc.port, "/ssh/prod", ALICE)
        s.read(1000)
        s.leg.close(wait=5)
        wait_for("the warm-up session to end", lambda: sc.audit("session_end"))
        base = sc.rss_kib()
        legs = [Leg.connect(sc.port, "/ssh/prod", [("Authorization", f"Bearer {ALICE}"), (RESUME_HEADER, "new")],
                            rcvbuf=4096) for _ in range(sessions)]
        assert all(leg.headers.get(RESUME_HEADER) == "v1" for leg in legs)
        wait_for("every session to reach the target", lambda: target.open_now() == sessions)

        def total_down() -> int:
            return sum(x["bytes_down"] for x in json.loads(sc.admin("/sessions")[1]))

        # Settled: nothing more leaves the sidecar for a second.
        last = -1
        deadline = time.monotonic() + 20
        while (now := total_down()) != last and time.monotonic() < deadline:
            last = now
            time.sleep(1)
        grown = (sc.rss_kib() - base) * 1024
        listing = json.loads(sc.admin("/sessions")[1])
        for leg in legs:
            leg.drop()
    bound = sessions * (buffer + 2 * read + slack)
    print(f"\n{sessions} stalled sessions, --replay-buffer 1 MiB: RSS grew by {grown / MIB:.1f} MiB "
          f"(bound {bound / MIB:.1f} MiB); bytes sent per session at most {max(x['bytes_down'] for x in listing)}")
    assert len(listing) == sessions
    # Bytes sent are kept until acknowledged, and none ever is: the replay buffer (and what was
    # read from the target to fill it) bounds what each session ever sent.
    assert all(x["bytes_down"] <= buffer + 2 * read for x in listing), listing
    assert grown < bound


# --- Peers that know nothing of resumption --------------------------------------------------------


def test_a_client_that_does_not_offer_resumption_sees_no_change(sshd, make_sidecar):
    """No `x-wsgate-resume` in the request: no header in the 101, no control message, sshd's
    banner first, as before (SkyPilot's clients, websocat and browsers send no such header)."""
    sc = make_sidecar()
    url = f"ws://127.0.0.1:{sc.port}/kubernetes-pod-ssh-proxy?cluster_name=prod&client_version=62"
    with connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, open_timeout=10) as ws:
        assert RESUME_HEADER not in {k.lower() for k in ws.response.headers.keys()}
        assert ROUTE_HEADER not in {k.lower() for k in ws.response.headers.keys()}
        first = ws.recv(timeout=10)
        assert isinstance(first, bytes) and first.startswith(b"\x00SSH-2.0-"), first
    assert one_session_end(sc)["close_reason"] == "client_closed"
    assert not sc.audit("session_resumed")


# Where bench/setup.sh builds websocat 1.x (`make test` and `make bench` run it from there).
BENCH_WEBSOCAT = Path(__file__).resolve().parents[2] / "bench" / ".tools" / "websocat-1" / "bin" / "websocat"


def websocat() -> str | None:
    return shutil.which("websocat") or (str(BENCH_WEBSOCAT) if BENCH_WEBSOCAT.exists() else None)


@pytest.mark.skipif(websocat() is None, reason="websocat not installed (bench/setup.sh websocat-1 builds it)")
def test_websocat_as_proxycommand_against_a_resume_enabled_sidecar(sshd, make_sidecar, tmp_path):
    """websocat 1.x, which knows nothing of resumption, as ssh's ProxyCommand against a sidecar
    with resumption on: a command runs, 8 MiB go each way intact, and no session is parked or
    resumed (nothing waits for a client that never offered to come back)."""
    sc = make_sidecar()
    # The URL before -H: websocat's -H takes every following word as another header.
    cmd = f"{websocat()} --binary ws://127.0.0.1:{sc.port}/ssh/prod -H 'Authorization: Bearer {ALICE}'"
    r = sshd.run(cmd, "echo", "via-websocat")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"via-websocat\n"
    src = tmp_path / "payload"
    want = random_file(src, 8)
    with open(src, "rb") as f:
        up = sshd.run(cmd, "sha256sum", stdin=f)
    assert up.returncode == 0, up.stderr.decode()
    assert up.stdout.split()[0].decode() == want, "the bytes sshd read differ from those sent"
    down = sshd.run(cmd, "cat", str(src))
    assert down.returncode == 0, down.stderr.decode()
    assert hashlib.sha256(down.stdout).hexdigest() == want, "the bytes ssh got differ from sshd's"
    # websocat 1.x may hang up without a close frame (client_gone): a session that never offered
    # resumption ends there and then, as before; nothing is parked for it.
    ends = wait_for("three session_end lines", lambda: (e := sc.audit("session_end")) and len(e) == 3 and e, 15)
    assert all(e["close_reason"] in (*NORMAL_ENDS, "client_gone") for e in ends), ends
    assert sc.metric("wsgate_sessions_parked") == 0
    assert not sc.audit("session_resumed")
