"""`wsgate proxy` (the release binary): each class of failure gets one line that says the cause
and what to do, and its documented exit code. The real `wsgate-sidecar` plays the 403, the 404
and the SIGTERM drain (close code 1001); a Python TLS server plays a TLS port spoken to in
plain HTTP. Colour: only on a terminal, never with NO_COLOR.
"""
from __future__ import annotations

import os
import pty
import select
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from testbed.sidecar import ALICE, BOB, Sidecar, standard_args
from testbed.sshd import free_port
from testbed.wsgate import WSGATE, proxy_command

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ws_proxy", "WS_PROXY",
              "wss_proxy", "WSS_PROXY", "all_proxy", "ALL_PROXY", "NO_COLOR")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return {**env, **extra}


def run_wsgate(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(WSGATE), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          env=clean_env(**(env or {})), timeout=timeout)


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("wsgate: ")]
    assert len(lines) == 1, err
    assert ALICE not in err and BOB not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def side(workdir, sshd):
    sc = Sidecar(workdir / "client-errors-sidecar", standard_args(workdir, f"127.0.0.1:{sshd.port}")).start()
    yield sc
    sc.stop()


def test_403_says_the_identity_lacks_access_not_that_the_token_is_bad(side):
    """bob's token is valid, but bob may reach only `dev`: asking for `prod` is a 403."""
    r = run_wsgate("proxy", f"http://127.0.0.1:{side.port}", "prod", env={"WSGATE_TOKEN": BOB})
    assert r.returncode == 4, r.stderr
    line = one_line(r)
    assert "403" in line and "was accepted" in line and 'no access to cluster "prod"' in line, line
    assert "new token will not help" in line, line


def test_404_names_the_path_tried_and_the_path_expected(side):
    r = run_wsgate("proxy", f"http://127.0.0.1:{side.port}/gateway", "prod", env={"WSGATE_TOKEN": ALICE})
    assert r.returncode == 5, r.stderr
    line = one_line(r)
    assert "nothing is served at /gateway/kubernetes-pod-ssh-proxy" in line, line
    assert "/kubernetes-pod-ssh-proxy under the server URL" in line, line
    assert "--endpoint 'ssh/{cluster}'" in line, line


def test_the_generic_endpoint_form_the_404_suggests_works(sshd, side):
    """`--endpoint 'ssh/{cluster}'` reaches wsgate-sidecar's generic path (`--path /ssh/{cluster}`)."""
    px = proxy_command(f"http://127.0.0.1:{side.port}", "prod", "--endpoint", "ssh/{cluster}")
    r = sshd.run(px, "echo", "generic-path-ok", env={"WSGATE_TOKEN": ALICE, "http_proxy": "", "all_proxy": ""})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"generic-path-ok\n"


def test_https_to_a_plaintext_port_says_use_http(side):
    r = run_wsgate("proxy", f"https://127.0.0.1:{side.port}", "prod", env={"WSGATE_TOKEN": ALICE})
    assert r.returncode == 7, r.stderr
    line = one_line(r)
    assert "speaks plain HTTP" in line and "use http:// (ws://)" in line, line
    assert "--ca-file" not in line, line


@pytest.mark.parametrize("bare", ["127.0.0.1:{port}", "localhost:{port}"])
def test_a_bare_host_is_taken_as_https_and_says_so(side, bare):
    """No scheme: https:// is assumed (an info line says so); here the port is plaintext, so
    the error says to use http://, not that the URL cannot be parsed."""
    r = run_wsgate("proxy", bare.format(port=side.port), "prod", "-v", env={"WSGATE_TOKEN": ALICE})
    err = r.stderr.decode()
    assert "assuming https:// (wss://)" in err, err
    assert r.returncode == 7, err
    line = one_line(r)
    assert "use http:// (ws://)" in line, line


@pytest.fixture
def tls_port(tls):
    """A TLS server (Python's ssl, i.e. OpenSSL) that closes whatever is not a TLS handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls.cert_pem), str(tls.key_pem))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    sock.close()


def test_http_to_a_tls_port_says_use_https(tls_port):
    r = run_wsgate("proxy", f"http://127.0.0.1:{tls_port}", "prod")
    assert r.returncode == 7, r.stderr
    line = one_line(r)
    assert "speaks TLS on this port" in line and "use https:// (wss://)" in line, line
    assert "Handshake not finished" not in line, line


@pytest.mark.parametrize("flags,close_code", [([], "1012"), (["--no-resume"], "1001")], ids=["resumable", "not-resumable"])
def test_server_shutting_down_closes_with_1001_and_a_documented_exit_code(workdir, sshd, flags, close_code):
    """SIGTERM to the sidecar: after its grace period it closes the live session with 1001, or
    1012 if the session is resumable (the sidecar takes its sessions with it: nothing to resume).
    The client says the server is shutting down and to connect again, and exits 13 at once (not
    0: ssh must not take a cut session for a finished one; and no resume attempts)."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}", "--shutdown-grace", "1s")
    with Sidecar(workdir / f"client-errors-drain-{close_code}", args) as sc:
        p = subprocess.Popen([str(WSGATE), "proxy", *flags, f"http://127.0.0.1:{sc.port}", "prod"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=clean_env(WSGATE_TOKEN=ALICE))
        try:
            banner = b""
            deadline = time.monotonic() + 10
            while b"\n" not in banner and time.monotonic() < deadline:
                ready, _, _ = select.select([p.stdout], [], [], 0.5)
                if ready:
                    banner += os.read(p.stdout.fileno(), 256)
            assert banner.startswith(b"SSH-2.0-"), banner
            sc.proc.send_signal(signal.SIGTERM)
            code = p.wait(15)
            err = p.stderr.read().decode()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        assert code == 13, err
        lines = [line for line in err.splitlines() if line.startswith("wsgate: ")]
        assert len(lines) == 1, err
        assert "the server is shutting down" in lines[0] and "connect again" in lines[0], err
        assert close_code in lines[0], err
        assert "resuming" not in err, err


def run_on_a_terminal(args: list[str], env: dict) -> tuple[int, bytes]:
    """Runs wsgate with stderr on a pseudo-terminal; its exit code and what it wrote there."""
    master, slave = pty.openpty()
    p = subprocess.Popen([str(WSGATE), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 10)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(10), out


def test_the_error_prefix_is_coloured_only_on_a_terminal_without_no_color():
    args = ["proxy", "https://gw.example.invalid", "Not_A_Cluster"]
    code, out = run_on_a_terminal(args, clean_env())
    assert code == 2, out
    assert out.startswith(b"\x1b[1;31mwsgate:\x1b[0m "), out
    code, out = run_on_a_terminal(args, clean_env(NO_COLOR="1"))
    assert code == 2 and out.startswith(b"wsgate: ") and b"\x1b" not in out, out
    r = run_wsgate(*args)
    assert r.returncode == 2 and r.stderr.startswith(b"wsgate: ") and b"\x1b" not in r.stderr, r.stderr


def test_help_documents_every_exit_code():
    r = subprocess.run([str(WSGATE), "proxy", "--help"], capture_output=True, env=clean_env(), timeout=10)
    out = r.stdout.decode()
    assert r.returncode == 0, out
    for code in range(14):
        assert f"\n{code:>3}  " in out, (code, out)
    assert "--proxy" in out and "no_proxy" in out, out
