"""A throwaway OpenSSH server on loopback: its own host key, one authorized client key, a free port.

Runs as the current user with `UsePAM no`; everything lives in a temporary directory.
"""
from __future__ import annotations

import getpass
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for configs that must name it), taken
    below the kernel's ephemeral range when there is room. A port from that range (what binding
    to port 0 gives) is also where every outgoing connection draws its source port from, so one
    could take it before the program handed it binds it: a sidecar's admin port was lost that
    way once in about ten `make test` runs. Below the range only another pick can take it, and
    no port is handed out twice by one process."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(PICK_FROM, low) if low - PICK_FROM >= 1000 else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {PICK_FROM} and {low}")


# Where `free_port` starts: above the ports well-known services use.
PICK_FROM = 20000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The ephemeral range's first port (`net.ipv4.ip_local_port_range`)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return PICK_FROM


@dataclass
class Sshd:
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_key"

    @property
    def user(self) -> str:
        return getpass.getuser()

    def start(self) -> "Sshd":
        if not Path(SSHD).exists():
            raise RuntimeError("sshd missing: run testenv/setup.sh (make test does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        for name in ("host_key", "client_key"):
            if not (self.workdir / name).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.workdir / name)],
                    check=True,
                )
        auth = self.workdir / "authorized_keys"
        auth.write_text((self.workdir / "client_key.pub").read_text())
        os.chmod(auth, 0o600)
        # Privilege separation needs this directory when sshd runs as root.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = self.port or free_port()
        cfg = self.workdir / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.workdir / 'host_key'}",
                    f"AuthorizedKeysFile {auth}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "PidFile none",
                    "LogLevel ERROR",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg)],
            stdout=open(self.workdir / "sshd.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (self.workdir / "sshd.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def ssh_command(self, proxy_command: str, *remote: str) -> list[str]:
        """An `ssh` command line reaching this sshd through `proxy_command`."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes",
            "-o", f"ProxyCommand={proxy_command}",
            f"{self.user}@wsgate-target",
            *remote,
        ]

    def run(self, proxy_command: str, *remote: str, stdin=None, stdout=subprocess.PIPE,
            env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs the real `ssh` through `proxy_command`; stdout and stderr captured."""
        return subprocess.run(
            self.ssh_command(proxy_command, *remote),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
