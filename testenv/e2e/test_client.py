"""`wsgate proxy` end to end: the real `ssh`/`scp` → `wsgate proxy` (release binary) → the real
Envoy with the filter (Istio-like: plaintext port with the https redirect, TLS port) →
`wsgate-sidecar` → a throwaway `sshd`. Each error path is checked for its message and exit code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.envoy import Gateway, free_port
from testbed.sidecar import ALICE, BOB, NORMAL_ENDS, Sidecar, standard_args
from testbed.wsgate import WSGATE, proxy_command

ROUTES = [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
           "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]}]


@pytest.fixture(scope="module")
def side(workdir, sshd):
    sc = Sidecar(workdir / "client-sidecar", standard_args(workdir, f"127.0.0.1:{sshd.port}")).start()
    yield sc
    sc.stop()


@pytest.fixture(scope="module")
def gw(workdir, tls, side, request):
    """The gateway as a platform team runs it: no plaintext allowance; 426 hints name the TLS port."""
    tls_port = free_port()
    config = {"redirectGuard": {"httpsPort": tls_port}, "routes": ROUTES}
    g = Gateway(workdir / "client-gw", json.dumps(config), side.port, tls, tls_port).start()
    yield g
    g.stop()
    if request.session.testsfailed:
        sys.stderr.write(f"\n===== envoy log (client suite) =====\n{g.log()[-8000:]}\n")


def https(g: Gateway) -> str:
    return f"https://localhost:{g.ports['tls']}"


def run_wsgate(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """`wsgate` on its own (no ssh), stdin empty: for the error paths."""
    return subprocess.run([str(WSGATE), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_ssh_over_wss_with_the_token_in_authorization(sshd, gw, tls, side):
    px = proxy_command(https(gw), "prod", "--ca-file", str(tls.ca_pem))
    r = sshd.run(px, "echo", "via-wsgate", env={"WSGATE_TOKEN": ALICE})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"via-wsgate\n"
    # ssh hangs up its ProxyCommand when done: wsgate still closes the session cleanly.
    ends = side.wait_audit("session_end")
    assert ends and ends[-1]["close_code"] == 1000, ends[-1:]
    assert ends[-1]["close_reason"] in NORMAL_ENDS


def test_ssh_with_the_token_in_the_subprotocol(sshd, gw, tls, tmp_path):
    """`--token-in-subprotocol`: the filter turns the entry into `Authorization`."""
    token_file = tmp_path / "token"
    token_file.write_text(BOB + "\n")
    before = gw.counters().get("wsgate_tokens_rewritten_total", 0)
    px = proxy_command(https(gw), "dev.wsgate", "--ca-file", str(tls.ca_pem),
                       "--token-file", str(token_file), "--token-in-subprotocol")
    r = sshd.run(px, "echo", "subprotocol-ok")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"subprotocol-ok\n"
    assert gw.counters()["wsgate_tokens_rewritten_total"] > before


def test_scp_100_mib_with_matching_sha256(sshd, gw, tls, tmp_path):
    src = tmp_path / "payload.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    px = proxy_command(https(gw), "prod", "--ca-file", str(tls.ca_pem))
    dst = tmp_path / "copied.bin"
    scp = ["scp", "-q", *sshd.ssh_command(px)[1:-1], str(src), f"{sshd.user}@wsgate-target:{dst}"]
    r = subprocess.run(scp, capture_output=True, env={**os.environ, "WSGATE_TOKEN": ALICE}, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == want


def test_kubeconfig_token_source(sshd, gw, tls, tmp_path):
    """`--kubeconfig`: the current context's user token (here, one the sidecar accepts)."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "work",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": ALICE}}],
        "contexts": [{"name": "work", "context": {"cluster": "k", "user": "me"}}],
    }))
    px = proxy_command(https(gw), "prod", "--ca-file", str(tls.ca_pem), "--kubeconfig")
    r = sshd.run(px, "echo", "kubeconfig-ok", env={"KUBECONFIG": str(kubeconfig), "WSGATE_TOKEN": ""})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"kubeconfig-ok\n"


def test_plaintext_gets_the_426_with_the_url_to_use(gw):
    r = run_wsgate("proxy", f"http://127.0.0.1:{gw.ports['plaintext']}", "prod", env={"WSGATE_TOKEN": ALICE})
    assert r.returncode == 3, r.stderr
    err = r.stderr.decode()
    assert "426" in err and f"use `wsgate proxy https://127.0.0.1:{gw.ports['tls']} ...` instead" in err


def test_plaintext_allowed_where_the_gateway_trusts_the_source(workdir, sshd, tls, side):
    """A gateway configured to trust 127.0.0.1 on the SSH path lets `http://` through."""
    config = {"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["127.0.0.1/32"],
                                                   "pathPrefixes": ["/kubernetes-pod-ssh-proxy"]}},
              "routes": ROUTES}
    with Gateway(workdir / "client-gw-plain", json.dumps(config), side.port, tls) as g:
        px = proxy_command(f"http://127.0.0.1:{g.ports['plaintext']}", "prod")
        r = sshd.run(px, "echo", "plaintext-ok", env={"WSGATE_TOKEN": ALICE})
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b"plaintext-ok\n"


@pytest.mark.parametrize(
    "case, args, env, code, needles",
    [
        ("token refused", lambda g, t: [https(g), "prod", "--ca-file", t], {"WSGATE_TOKEN": "sky_wrong"}, 4,
         ["401", "the token came from WSGATE_TOKEN"]),
        ("no token", lambda g, t: [https(g), "prod", "--ca-file", t], {"WSGATE_TOKEN": ""}, 4,
         ["401", "no token was sent", "--token-file"]),
        ("forbidden", lambda g, t: [https(g), "prod", "--ca-file", t], {"WSGATE_TOKEN": BOB}, 4, ["403"]),
        ("unknown cluster", lambda g, t: [https(g), "staging", "--ca-file", t], {"WSGATE_TOKEN": ALICE}, 5,
         ["404", "unknown_cluster"]),
        ("untrusted certificate", lambda g, t: [https(g), "prod"], {"WSGATE_TOKEN": ALICE}, 7,
         ["TLS with localhost", "--ca-file"]),
        ("nothing listening", lambda g, t: [f"https://127.0.0.1:{free_port()}", "prod"], {"WSGATE_TOKEN": ALICE}, 8,
         ["cannot connect to 127.0.0.1:"]),
        ("token over plaintext to a remote host", lambda g, t: ["http://gw.example.invalid", "prod"],
         {"WSGATE_TOKEN": ALICE}, 9, ["refusing to send a token over plaintext", "--allow-plaintext"]),
        ("bad cluster name", lambda g, t: [https(g), "Prod"], {}, 2, ["not a cluster name"]),
    ],
)
def test_error_paths_have_a_message_and_an_exit_code(gw, tls, case, args, env, code, needles):
    r = run_wsgate("proxy", *args(gw, str(tls.ca_pem)), env=env)
    err = r.stderr.decode()
    assert r.returncode == code, (case, err)
    assert err.startswith("wsgate: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (case, err)
    assert ALICE not in err and r.stdout == b""


def test_backend_down_is_exit_6(workdir, tls):
    """A sidecar whose sshd is gone answers 502 before the upgrade."""
    with Sidecar(workdir / "client-down", standard_args(workdir, f"127.0.0.1:{free_port()}")) as sc:
        r = run_wsgate("proxy", f"http://127.0.0.1:{sc.port}", "prod", env={"WSGATE_TOKEN": ALICE})
        assert r.returncode == 6, r.stderr
        assert "502" in r.stderr.decode() and "target_unreachable" in r.stderr.decode()


def test_ssh_config_block(gw, tls):
    """The ProxyCommand is the binary that wrote the block, by its canonical path."""
    r = run_wsgate("ssh-config", https(gw), "--ca-file", str(tls.ca_pem), "--token-file", "/tmp/t")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "Host *.wsgate" in out
    assert f"ProxyCommand {WSGATE.resolve()} proxy {https(gw)} %h --ca-file {tls.ca_pem} --token-file /tmp/t" in out
    assert "ServerAliveInterval 30" in out


def test_ssh_goes_through_the_block_an_installed_binary_wrote(sshd, gw, tls, tmp_path):
    """The README's path: install the binary (here a copy in a directory whose name needs
    quoting for the shell and `%%` for ssh), append its `ssh-config` block, `ssh <cluster>.wsgate`.
    The real ssh, with only that block for a config, reaches sshd through the installed copy."""
    bindir = tmp_path / "it's my bin 100%h"
    bindir.mkdir()
    installed = bindir / "wsgate"
    shutil.copy2(WSGATE, installed)
    token_file = tmp_path / "token"
    token_file.write_text(ALICE + "\n")
    r = subprocess.run([str(installed), "ssh-config", https(gw), "--ca-file", str(tls.ca_pem),
                        "--token-file", str(token_file)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert "ProxyCommand '" in r.stdout.decode() and "100%%h" in r.stdout.decode(), r.stdout.decode()
    config = tmp_path / "ssh_config"
    config.write_bytes(r.stdout)
    ssh = ["ssh", "-F", str(config), "-i", str(sshd.client_key), "-o", "IdentitiesOnly=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"{sshd.user}@prod.wsgate", "echo", "via-ssh-config"]
    env = {k: v for k, v in os.environ.items() if k != "WSGATE_TOKEN"}
    r = subprocess.run(ssh, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"via-ssh-config\n"


SETUP_SKYPILOT = Path(__file__).resolve().parents[1] / "setup-skypilot.sh"


@pytest.fixture(scope="session")
def sky_venv() -> Path:
    """SkyPilot's client in its own virtualenv, installed on first use (it is large, and only
    this test needs it)."""
    r = subprocess.run(["bash", str(SETUP_SKYPILOT)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"testenv/setup-skypilot.sh failed:\n{r.stderr}"
    return Path(r.stdout.strip())


def test_the_real_skypilot_client_through_envoy_and_the_sidecar(sshd, gw, tls, side, tmp_path, sky_venv):
    """SkyPilot's own ProxyCommand (`sky/templates/websocket_proxy.py` from PyPI `skypilot`,
    unpatched) through Envoy with the filter into wsgate-sidecar: its service-account token
    (`sky_...` in SKYPILOT_SERVICE_ACCOUNT_TOKEN) goes in `Authorization: Bearer`, it sends
    `client_version=62` and speaks the typed framing. It needs a HOME (cookie jar) and trusts
    the test CA through SSL_CERT_FILE."""
    python = sky_venv / "bin" / "python"
    script = next(sky_venv.glob("lib/python*/site-packages/sky/templates/websocket_proxy.py"), None)
    assert python.exists() and script, f"no SkyPilot client in {sky_venv}"
    home = tmp_path / "home"
    home.mkdir()
    px = " ".join([str(python), str(script), https(gw), "prod"])
    r = sshd.run(px, "echo", "skypilot-client-ok", env={
        "SKYPILOT_SERVICE_ACCOUNT_TOKEN": ALICE, "SSL_CERT_FILE": str(tls.ca_pem), "HOME": str(home),
    }, timeout=180)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"skypilot-client-ok\n"
    started = [e for e in side.events() if e.get("message") == "session started" and e.get("user") == "alice"]
    assert started and started[-1]["framing"] == "Typed"
