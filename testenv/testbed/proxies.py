"""Real proxy servers from Debian's packages, for the client's proxy tests: `tinyproxy` (HTTP
CONNECT, optionally with BasicAuth, or with a `ConnectPort` rule that refuses every other port)
and `microsocks` (SOCKS5, optionally with a user name and password). Each runs in the
foreground on a free loopback port with its config and log in its own directory, and is
stopped (SIGTERM, then SIGKILL) by `stop()`. testenv/setup.sh installs both.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .sshd import free_port

INSTALL_HINT = "run testenv/setup.sh (it installs Debian's tinyproxy and microsocks)"


def binary(name: str) -> str:
    """The path of `name`, or an error that says how to get it."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if not path:
        raise RuntimeError(f"{name} missing: {INSTALL_HINT}")
    return path


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} not listening on {port}: {log.read_text(errors='replace')}")


def _url(scheme: str, port: int, user: str | None, password: str | None) -> str:
    auth = ""
    if user is not None:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
    return f"{scheme}://{auth}127.0.0.1:{port}"


@dataclass
class _Process:
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def settled_log(self, quiet: float = 0.3, timeout: float = 5.0) -> str:
        """The log once nothing has been added to it for `quiet` seconds (a proxy logs a
        connection, such as the start-up check's, a moment after it): compare two of these
        to tell whether anything reached the proxy in between."""
        deadline = time.monotonic() + timeout
        last = self.log()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.log()
            if now == last:
                return now
            last = now
        return last

    def _run(self, cmd: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(self.port, self.proc, self.log_path)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class TinyProxy(_Process):
    """tinyproxy: an HTTP proxy that answers CONNECT. With `credentials`, it wants them
    (407 without); with `connect_ports`, CONNECT to any other port is refused with 403."""

    credentials: tuple[str, str] | None = None
    connect_ports: list[int] = field(default_factory=list)

    def start(self) -> "TinyProxy":
        exe = binary("tinyproxy")
        self.port = self.port or free_port()
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            "LogLevel Connect",
            "MaxClients 50",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            # tinyproxy drops root; with no LogFile it logs to stdout (our log file).
            lines += ["User nobody", "Group nogroup"]
        if self.credentials:
            lines.append(f"BasicAuth {self.credentials[0]} {self.credentials[1]}")
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._run([exe, "-d", "-c", str(conf)])
        return self

    def url(self, user: str | None = None, password: str | None = None) -> str:
        return _url("http", self.port, user, password)

    def connects(self) -> list[str]:
        """The `host:port` of every CONNECT request it logged."""
        out = []
        for line in self.log().splitlines():
            if "Request (file descriptor" in line and ": CONNECT " in line:
                out.append(line.split(": CONNECT ", 1)[1].split()[0])
        return out

    def __enter__(self) -> "TinyProxy":
        return self.start()


@dataclass
class MicroSocks(_Process):
    """microsocks: a SOCKS5 server (it resolves names itself, as socks5h:// asks). With
    `credentials`, it accepts only RFC 1929 user name and password authentication."""

    credentials: tuple[str, str] | None = None

    def start(self) -> "MicroSocks":
        exe = binary("microsocks")
        self.port = self.port or free_port()
        cmd = [exe, "-i", "127.0.0.1", "-p", str(self.port)]
        if self.credentials:
            cmd += ["-u", self.credentials[0], "-P", self.credentials[1]]
        self._run(cmd)
        return self

    def url(self, scheme: str = "socks5h", user: str | None = None, password: str | None = None) -> str:
        return _url(scheme, self.port, user, password)

    def __enter__(self) -> "MicroSocks":
        return self.start()
