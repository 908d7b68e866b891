"""Faults on the real test bed, each checked for the answer a user relies on, an audit line, and
nothing left behind (open fds, sshd session processes):

- `sshd` killed mid-session (its session processes and its listener), then started again;
- the sidecar killed (SIGKILL) mid-session and restarted on the same ports;
- Envoy given a new filter configuration while it runs, from a file it watches (LDS from a
  path, as istiod's pushes arrive): a good one takes effect, a bad one is rejected with the old
  one still serving, and sessions opened before either keep working;
- the Kubernetes API server gone (connection refused) or silent (accepts, never answers). No API
  server can run here: a scripted stand-in (testbed/kubeapi.py) answers until it is closed, and
  a bare listening socket plays the silent one.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from clients import raw_request, upgrade_headers
from testbed.envoy import Gateway
from testbed.kubeapi import KubeApiStub, write_kubeconfig
from testbed.procfs import descendants
from testbed.sidecar import ALICE, NORMAL_ENDS, Sidecar, standard_args
from testbed.sshd import Sshd
from testbed.wsgate import WSGATE, proxy_command


def wait_for(what: str, check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def open_session(sshd: Sshd, px: str) -> subprocess.Popen:
    """A real ssh session through `px`, running until killed; returns once the shell answered."""
    p = subprocess.Popen(sshd.ssh_command(px, "echo ready; exec sleep 120"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "WSGATE_TOKEN": ALICE})
    assert p.stdout.readline() == b"ready\n", p.stderr.read1().decode() if p.poll() is not None else ""
    return p


def ends_of(sc: Sidecar, n: int) -> list[dict]:
    return wait_for(f"{n} session_end audit lines", lambda: (e := sc.audit("session_end")) and len(e) >= n and e)


def test_sshd_killed_mid_session_ends_it_cleanly_and_a_restarted_sshd_serves_again(workdir):
    sshd = Sshd(workdir / "sshd-killed").start()
    try:
        with Sidecar(workdir / "sc-sshd-killed", standard_args(workdir, f"127.0.0.1:{sshd.port}")) as sc:
            px = proxy_command(f"http://127.0.0.1:{sc.port}", "prod")
            assert sshd.run(px, "true", env={"WSGATE_TOKEN": ALICE}).returncode == 0
            ends_of(sc, 1)
            baseline = sc.open_fds()

            p = open_session(sshd, px)
            sessions = descendants(sshd.proc.pid)
            assert sessions, "sshd has no session process"
            for pid in [*sessions, sshd.proc.pid]:
                os.kill(pid, signal.SIGKILL)
            sshd.proc.wait(5)
            # ssh learns at once (the sidecar closes the WebSocket), not at a keepalive timeout.
            assert p.wait(15) == 255
            end = ends_of(sc, 2)[-1]
            # A FIN is target_closed (1000); a reset, if the kernel sends one, target_error (1011).
            assert (end["close_reason"], end["close_code"]) in {("target_closed", 1000), ("target_error", 1011)}
            assert end["user"] == "alice" and end["cluster"] == "prod"
            assert sc.wait_open_fds(baseline) <= baseline

            # While sshd is down: the documented 502 before the upgrade, wsgate's exit code 6.
            r = subprocess.run([str(WSGATE), "proxy", f"http://127.0.0.1:{sc.port}", "prod"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                               env={**os.environ, "WSGATE_TOKEN": ALICE})
            assert r.returncode == 6 and b"target_unreachable" in r.stderr, r.stderr
            (refused,) = sc.wait_audit("session_refused")
            assert (refused["status"], refused["reason"]) == (502, "target_unreachable")

            sshd.start()  # same port
            r = sshd.run(px, "echo", "back", env={"WSGATE_TOKEN": ALICE})
            assert r.returncode == 0 and r.stdout == b"back\n", r.stderr
            ends_of(sc, 3)
            assert sc.wait_open_fds(baseline) <= baseline
            assert ALICE not in sc.log()
    finally:
        sshd.stop()


@pytest.mark.parametrize("resumable", [False, True], ids=["not-resumable", "resumable"])
def test_sidecar_killed_mid_session_then_restarted_on_the_same_ports(workdir, sshd, resumable):
    """A sidecar killed (no close frame: the client cannot tell a crash from a network drop).
    Not resumable: the client says why in one line at once. Resumable: it tries to resume, and
    the restarted sidecar, which never held the session, refuses: exit 16, one line saying so."""
    args = standard_args(workdir, f"127.0.0.1:{sshd.port}")
    sc = Sidecar(workdir / "sc-restart", args).start()
    try:
        flags = [] if resumable else ["--no-resume"]
        px = proxy_command(f"http://127.0.0.1:{sc.port}", "prod", *flags)
        before = set(descendants(sshd.proc.pid))
        p = open_session(sshd, px)
        assert set(descendants(sshd.proc.pid)) - before, "no sshd session for the bridge"
        sc.proc.kill()
        sc.proc.wait(5)
        # sshd sees its TCP peer gone and ends the session: no process is left waiting.
        wait_for("sshd to end the orphaned session", lambda: set(descendants(sshd.proc.pid)) <= before)
        if not resumable:
            # The client says why in one line and ssh exits; no wsgate process stays behind.
            assert p.wait(15) == 255
            err = p.stderr.read().decode()
            assert "wsgate: the server connection failed" in err, err
        sc = Sidecar(workdir / "sc-restart", args, port=sc.port, admin_port=sc.admin_port).start()
        if resumable:
            assert p.wait(30) == 255
            err = p.stderr.read().decode()
            lines = [ln for ln in err.splitlines() if ln.startswith("wsgate: ")]
            assert len(lines) == 2 and "resuming session" in lines[0], err
            assert "could not be resumed" in lines[1] and "no longer holds the session" in lines[1], err
            refused = wait_for("the refusal's audit line", lambda: sc.audit("resume_refused"))
            assert refused[0]["reason"] == "resume_unknown", refused
        r = sshd.run(px, "echo", "restarted", env={"WSGATE_TOKEN": ALICE})
        assert r.returncode == 0 and r.stdout == b"restarted\n", r.stderr
        assert ends_of(sc, 1)[-1]["close_reason"] in NORMAL_ENDS
    finally:
        sc.stop()


ROUTES = {"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name"}


def test_filter_config_reload_good_applies_bad_is_rejected_and_the_old_keeps_serving(workdir, backend, tls):
    """Listener updates from a watched file. Envoy drains a replaced listener's connections for
    `--drain-time-s`, then closes them: sessions opened before a push live that long
    (docs/testing.md, Faults, says so; Istio delivers WasmPlugin configuration over ECDS)."""
    def config(*clusters: str) -> str:
        return json.dumps({"routes": [{**ROUTES, "allowedClusters": list(clusters)}]})

    with Gateway(workdir / "gw-reload", config("prod"), backend.port, tls, dynamic=True, drain_seconds=6) as gw:
        def ask(cluster: str) -> int:
            tid = uuid.uuid4().hex
            r = raw_request(gw.ports["tls"], f"/kubernetes-pod-ssh-proxy?cluster_name={cluster}",
                            upgrade_headers(tid), tls_context=tls.client_context())
            if r.status == 101:
                assert [v for k, v in backend.find(tid)["headers"] if k == "x-wsgate-cluster"] == [cluster]
            return r.status

        assert (ask("prod"), ask("dev")) == (101, 404)
        # A session opened under the first configuration.
        url = f"wss://localhost:{gw.ports['tls']}/kubernetes-pod-ssh-proxy?cluster_name=prod"
        with connect(url, ssl=tls.client_context(), open_timeout=10) as ws:
            loaded = gw.log().count("wsgate-filter config loaded")
            assert gw.reload(config("prod", "dev")) is True
            reloaded_at = time.monotonic()
            assert wait_for("dev to be routed", lambda: ask("dev") == 101)
            assert gw.log().count("wsgate-filter config loaded") > loaded

            bad = json.dumps({"routes": [{**ROUTES, "alowedClusters": ["staging"]}]})
            assert gw.reload(bad) is False
            # One line from the filter naming the field, and Envoy's verdict.
            assert "wsgate-filter: invalid pluginConfig: routes[0].alowedClusters: unknown field" in gw.log()
            assert "lds: listener 'tls' config rejected" in gw.log()
            # Still the good configuration: dev routed, staging refused, Envoy alive.
            assert (ask("dev"), ask("staging"), gw.proc.poll()) == (101, 404, None)

            # The earlier session works through the drain window, and is closed at its end.
            assert time.monotonic() - reloaded_at < 5
            ws.send(b"\x00still here")
            assert ws.recv(timeout=5) == b"\x00still here"
            with pytest.raises(ConnectionClosed):
                while time.monotonic() - reloaded_at < 15:
                    ws.send(b"\x00ping")
                    ws.recv(timeout=5)
                    time.sleep(0.5)
        # Reloads leave nothing behind: after the first one (Envoy then holds one more listen
        # socket per worker and listener, for good), more reloads do not add a single fd.
        fds = gw.open_fds()
        for clusters in (["prod"], ["dev"], ["prod", "dev"]):
            assert gw.reload(config(*clusters)) is True
            assert gw.reload(bad) is False
        time.sleep(gw.drain_seconds + 1)
        assert ask("dev") == 101
        assert wait_for("Envoy's fds to settle", lambda: gw.open_fds() <= fds, timeout=10)


def test_kubernetes_api_gone_or_silent_fails_closed(workdir, sshd):
    api = KubeApiStub(tokens={"k8s-token-alice": ("alice", []), "k8s-token-bob": ("bob", [])}, allowed=set(), pods={})
    args = ["--target", f"127.0.0.1:{sshd.port}", "--allowed-clusters", "prod", "--log-format", "json",
            "--auth", "token-review", "--auth-cache-ttl", "3s", "--kube-timeout", "1s"]

    def handshake(sc: Sidecar, token: str) -> tuple[int, str, float]:
        started = time.monotonic()
        r = raw_request(sc.port, "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                        upgrade_headers("x") + [("Authorization", f"Bearer {token}")])
        return r.status, r.json()["reason"] if r.status != 101 else "", time.monotonic() - started

    try:
        env = {"KUBECONFIG": str(api.write_kubeconfig(workdir / "kubeconfig-gone", "default"))}
        with Sidecar(workdir / "sc-api-gone", args, env=env) as sc:
            status, _, _ = handshake(sc, "k8s-token-alice")
            reviewed_at = time.monotonic()
            assert status == 101
            ends_of(sc, 1)
            baseline = sc.open_fds()
            api.close()

            # A remembered positive review still holds until its TTL...
            assert handshake(sc, "k8s-token-alice")[:2] == (101, "")
            # ...an unknown token cannot be checked: 503 at once, never a pass.
            status, reason, took = handshake(sc, "k8s-token-bob")
            assert (status, reason) == (503, "auth_unavailable") and took < 2
            # ...and once the TTL is over, alice is not let in on an old answer either.
            time.sleep(max(0.0, reviewed_at + 3.2 - time.monotonic()))
            assert handshake(sc, "k8s-token-alice")[:2] == (503, "auth_unavailable")
            refused = sc.audit("session_refused")
            assert [(e["status"], e["reason"]) for e in refused] == [(503, "auth_unavailable")] * 2
            assert "TokenReview failed" in sc.log()
            assert sc.wait_open_fds(baseline) <= baseline
            assert "k8s-token" not in sc.log()
    finally:
        api.close()

    # Silent: the port accepts connections (the kernel's backlog) and nothing ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {"KUBECONFIG": str(write_kubeconfig(workdir / "kubeconfig-silent", silent.getsockname()[1], "default"))}
        with Sidecar(workdir / "sc-api-silent", args, env=env) as sc:
            baseline = sc.open_fds()
            status, reason, took = handshake(sc, "k8s-token-alice")
            assert (status, reason) == (503, "auth_unavailable")
            assert 0.9 < took < 5, took  # --kube-timeout 1s, well before --handshake-timeout
            assert "TokenReview timed out" in sc.log()
            assert sc.wait_open_fds(baseline + 1) <= baseline + 1  # + the pooled API connection
            assert "k8s-token" not in sc.log()


@pytest.fixture(autouse=True)
def _no_stray_clients():
    """No `wsgate proxy` survives its ssh."""
    yield
    out = subprocess.run(["pgrep", "-f", "wsgate proxy http://127.0.0.1"], capture_output=True, text=True).stdout
    assert out.strip() == "", f"stray wsgate processes: {out}"
