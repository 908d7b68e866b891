"""Fixtures for the real-Envoy suite: one recording backend, throwaway TLS, and Envoy gateways.

Every process is started here and stopped here; on a failing test the Envoy log is printed.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# `wsgate proxy` honours the caller's proxy settings, as curl does: the suite's loopback servers
# must not be reached through a proxy the machine running it happens to have set. The proxy
# tests pass their settings explicitly.
for _name in ("http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)

from testbed.backend import RecordingBackend  # noqa: E402
from testbed.certs import make_tls  # noqa: E402
from testbed.envoy import Gateway, free_port  # noqa: E402
from testbed.sshd import Sshd  # noqa: E402

# The configuration the main gateway runs: the routing rules a SkyPilot + multi-cluster UI
# deployment uses, and a plaintext allowance narrow enough to test both sides of (only
# 127.0.0.2, only /plain-ok). The TLS port is filled in once Envoy has picked it.
SUITE_CONFIG = {
    "redirectGuard": {
        "allowPlaintext": {"trustedCidrs": ["127.0.0.2/32"], "pathPrefixes": ["/plain-ok"]},
    },
    "routes": [
        {
            "name": "skypilot-ssh",
            "prefix": "/kubernetes-pod-ssh-proxy",
            "clusterQueryParam": "cluster_name",
            "allowedClusters": ["prod", "dev"],
        },
        {
            "name": "ui",
            "pattern": "/c/{cluster}",
            "stripPrefix": True,
            "removeHeaders": ["user-agent", "origin"],
        },
    ],
}


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="wsgate-e2e-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def tls(workdir):
    return make_tls(workdir)


@pytest.fixture(scope="session")
def backend():
    b = RecordingBackend().start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def gateway(workdir, backend, tls, request):
    # The 426 hint names the TLS port, so that port is picked here rather than by Envoy.
    tls_port = free_port()
    config = json.loads(json.dumps(SUITE_CONFIG))
    config["redirectGuard"]["httpsPort"] = tls_port
    gw = Gateway(workdir / "gateway", json.dumps(config), backend.port, tls, tls_port).start()
    yield gw
    gw.stop()
    assert not gw.vm_crashes(), f"the filter's VM crashed during the suite: {gw.vm_crashes()}"
    if request.session.testsfailed:
        sys.stderr.write(f"\n===== envoy log ({gw.log_path}) =====\n{gw.log()[-20000:]}\n")


@pytest.fixture(scope="session")
def sshd(workdir):
    """A throwaway OpenSSH server on loopback, shared by the sidecar and client suites."""
    s = Sshd(workdir / "sshd").start()
    yield s
    s.stop()
