"""Runs the real `wsgate-sidecar` binary on free loopback ports, with its JSON log in a file."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .procfs import open_fds, status_kib
from .sshd import free_port

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = Path(os.environ.get("WSGATE_SIDECAR", ROOT / "target" / "release" / "wsgate-sidecar"))


# The test bed's standard identities: a token file with two users, and a policy that lets
# admins reach every cluster and bob only `dev`.
ALICE, BOB = "sky_alice_0123456789", "sky_bob_0123456789"
TOKENS = f"{ALICE} alice admins\n{BOB} bob dev\n"
POLICY = {"rules": [{"groups": ["admins"], "clusters": ["*"]}, {"users": ["bob"], "clusters": ["dev"]}]}


# How a session that ended normally is audited: which side closed first is a race (ssh's exit
# closing the client's stdin, or sshd closing its connection after the command ends).
NORMAL_ENDS = ("client_closed", "target_closed")


def standard_args(workdir: Path, target: str, *extra: str) -> list[str]:
    """Flags for a pod-side sidecar in front of `target` with the standard identities."""
    tokens = workdir / "tokens"
    tokens.write_text(TOKENS)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(POLICY))
    return [
        "--target", target,
        "--auth", "token-file", "--token-file", str(tokens),
        "--authz-policy", str(policy),
        "--allowed-clusters", "prod,dev",
        "--path", "/ssh/{cluster}",
        "--log-format", "json",
        *extra,
    ]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise AssertionError(f"a JSON log line has the keys {dup} twice")
    return dict(pairs)


@dataclass
class Sidecar:
    workdir: Path
    args: list[str]
    port: int = 0
    admin_port: int = 0
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "sidecar.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict]:
        """The JSON log lines (the audit trail is part of them). A key twice in one line fails
        the test: log pipelines drop or reject such lines."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line, object_pairs_hook=_unique_keys))
            except ValueError:
                pass
        return out

    def audit(self, event: str) -> list[dict]:
        return [e for e in self.events() if e.get("target") == "wsgate::audit" and e.get("event") == event]

    def wait_audit(self, event: str, timeout: float = 5.0) -> list[dict]:
        """The audit lines of `event`, waiting up to `timeout` for the first one."""
        deadline = time.monotonic() + timeout
        while not self.audit(event) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.audit(event)

    def start(self) -> "Sidecar":
        if not SIDECAR.exists():
            raise RuntimeError(f"{SIDECAR} missing: `make sidecar` (make test does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ports picked here were free a moment ago; another socket may still take one before the
        # sidecar binds it (rarely, now that `free_port` keeps out of the range outgoing
        # connections draw from): then new ones are picked. Ports a test chose are its to keep.
        # The failed attempt's lines are cut from the log, which tests read as the sidecar's.
        picked = {"--listen": not self.port, "--admin-listen": not self.admin_port}
        for attempt in range(3):
            self.port = free_port() if picked["--listen"] else self.port
            self.admin_port = free_port() if picked["--admin-listen"] else self.admin_port
            start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start_once(start)
            except RuntimeError as e:
                taken = "Address already in use" in str(e) and any(
                    ours and f"binding {flag} " in str(e) for flag, ours in picked.items())
                if attempt == 2 or not taken:
                    raise
                os.truncate(self.log_path, start)
        raise AssertionError("unreachable")

    def _start_once(self, log_start: int) -> "Sidecar":
        cmd = [
            str(SIDECAR),
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "WSGATE_LOG": "info", **self.env},
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                new = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                raise RuntimeError(f"sidecar exited {self.proc.returncode}: {new}")
            try:
                if self.admin("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("sidecar not ready: " + self.log())

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, line_prefix: str) -> float:
        """The value of the first `/metrics` line starting with `line_prefix` (0 if absent)."""
        for line in self.admin("/metrics")[1].splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rss_kib(self) -> int:
        return status_kib(self.proc.pid, "VmRSS")

    def open_fds(self) -> int:
        return open_fds(self.proc.pid)

    def wait_open_fds(self, at_most: int, timeout: float = 5.0) -> int:
        """The open fd count once it is at most `at_most`, or after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.open_fds() > at_most and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.open_fds()

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "Sidecar":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- A 101 the client does not take ----------------------------------------------------------

# A keep-alive request the sidecar answers on its sessions' port.
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def until(check: Callable[[], bool], timeout: float) -> bool:
    """Polls `check` until it holds (`True`) or `timeout` seconds pass (`False`)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stall_a_101(port: int, metric: Callable[[str], float], upgrade: bytes, progress: str,
                settle: Callable[[], None], reset: bool = False, tries: int = 3) -> socket.socket | None:
    """A connection to the sidecar on `port` whose `101` for `upgrade` (a request whose answer
    is some 60 kB long) passed every check and cannot be written, so it stays in progress until
    the returned socket is closed; `None` if no attempt stalled.

    On loopback the kernel's send buffer would take the 101 whole, so keep-alive GETs go first,
    pipelined, and their answers, never read from a tiny receive window, fill the buffers. How
    many GETs leave just too little room for the 101 depends on the kernel, so it is searched
    for: too few and the 101 gets through (the `progress` metric moves: the request went on;
    the socket is closed, with a reset if `reset`, and `settle` waits for the sidecar to be as
    before), too many and the upgrade is never read. `metric` is `Sidecar.metric`."""
    accepted = 'wsgate_handshake_duration_seconds_count{result="accepted"}'
    for _ in range(tries):
        lo, hi = 0, 100_000
        while lo <= hi:
            k = (lo + hi) // 2
            before, progressed = metric(accepted), metric(progress)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            data, sent = HEALTHZ * k + upgrade, 0
            deadline = time.monotonic() + 3
            while sent < len(data) and time.monotonic() < deadline:
                try:
                    sent += sock.send(data[sent:])
                except BlockingIOError:
                    time.sleep(0.01)
            upgraded = until(lambda: metric(accepted) > before, 1.5)
            went_on = upgraded and until(lambda: metric(progress) != progressed, 0.5)
            if upgraded and not went_on:
                return sock
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            if went_on:
                lo = k + 1
                settle()
            else:
                hi = k - 1
    return None
