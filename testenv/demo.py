#!/usr/bin/env python3
"""`make demo`: the whole path on loopback, with real components, and a report of what it proved.

ssh → `wsgate proxy` (wss://, token in the Kubernetes subprotocol) → Envoy 1.40 with the wsgate
filter (an Istio-like gateway: https redirect on the plaintext port, TLS on the other) →
`wsgate-sidecar` → a throwaway `sshd`. Last, the gateway is killed mid-scp and started again:
the session resumes and the copy completes. Everything it starts, it stops.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed.certs import make_tls  # noqa: E402
from testbed.envoy import Gateway, free_port  # noqa: E402
from testbed.sidecar import ALICE, Sidecar, standard_args  # noqa: E402
from testbed.sshd import Sshd  # noqa: E402
from testbed.wsgate import WSGATE, proxy_command  # noqa: E402

proved: list[str] = []


def step(title: str) -> None:
    print(f"\n▶ {title}", flush=True)


def ok(claim: str) -> None:
    proved.append(claim)
    print(f"  ✓ {claim}", flush=True)


def fail(why: str) -> None:
    print(f"  ✗ {why}", flush=True)
    raise SystemExit(1)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wsgate-demo-") as d:
        work = Path(d)
        tls = make_tls(work)
        sshd = Sshd(work / "sshd")
        side = gw = None
        try:
            step("starting a throwaway sshd, wsgate-sidecar and Envoy with the filter (loopback only)")
            sshd.start()
            side = Sidecar(work / "sidecar", standard_args(work, f"127.0.0.1:{sshd.port}")).start()
            tls_port = free_port()
            config = {
                "redirectGuard": {"httpsPort": tls_port},
                "routes": [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
                            "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]}],
            }
            gw = Gateway(work / "envoy", json.dumps(config), side.port, tls, tls_port).start()
            print(f"  sshd 127.0.0.1:{sshd.port} · sidecar 127.0.0.1:{side.port} · "
                  f"Envoy http://127.0.0.1:{gw.ports['plaintext']} (https redirect) and "
                  f"https://localhost:{gw.ports['tls']}")
            server = f"https://localhost:{gw.ports['tls']}"
            px = proxy_command(server, "prod", "--ca-file", str(tls.ca_pem), "--token-in-subprotocol")
            env = {"WSGATE_TOKEN": ALICE}
            print(f"  ProxyCommand: wsgate proxy {server} prod --ca-file ca.pem --token-in-subprotocol")

            step("ssh runs a remote command through the gateway")
            r = sshd.run(px, "echo hello from $(hostname) as $(whoami)", env=env)
            if r.returncode != 0:
                fail(r.stderr.decode().strip())
            print("  remote:", r.stdout.decode().strip())
            ok("ssh over wss:// through Envoy + filter + sidecar, token sent in the subprotocol")

            step("scp copies a 20 MiB file; both ends hash it")
            src = work / "payload.bin"
            src.write_bytes(os.urandom(20 << 20))
            dst = work / "copied.bin"
            t0 = time.monotonic()
            scp = ["scp", "-q", *sshd.ssh_command(px)[1:-1], str(src), f"{sshd.user}@wsgate-target:{dst}"]
            r = subprocess.run(scp, capture_output=True, env={**os.environ, **env}, timeout=300)
            if r.returncode != 0:
                fail(r.stderr.decode().strip())
            secs = time.monotonic() - t0
            a, b = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, dst))
            print(f"  sha256 local  {a}\n  sha256 remote {b}\n  {20 / secs:.0f} MiB/s")
            if a != b:
                fail("hashes differ")
            ok("a 20 MiB scp arrives intact (sha256 matches)")


            step("a ws:// attempt on the https-redirect port")
            c = http.client.HTTPConnection("127.0.0.1", gw.ports["plaintext"], timeout=10)
            c.request("GET", "/", headers={"Host": "localhost"})
            plain = c.getresponse()
            print(f"  plain GET       → {plain.status} Location: {plain.getheader('location')}")
            r = subprocess.run([str(WSGATE), "proxy", f"http://127.0.0.1:{gw.ports['plaintext']}", "prod"],
                               stdin=subprocess.DEVNULL, capture_output=True, env={**os.environ, **env}, timeout=30)
            print(f"  wsgate proxy    → exit {r.returncode}: {r.stderr.decode().strip()}")
            if plain.status != 301 or r.returncode != 3 or "426" not in r.stderr.decode():
                fail("expected a 301 for the plain GET and a 426 (exit 3) for the upgrade")
            ok("the useless 301 becomes a 426 that names the wss:// URL; plain GETs keep their 301")

            step("what the gateway and the sidecar counted")
            counters = gw.counters()
            for k in ("wsgate_upgrades_total", "wsgate_tokens_rewritten_total", "wsgate_routed_total",
                      "wsgate_redirects_guarded_total"):
                print(f"  envoy   {k} = {counters.get(k, 0)}")
            print(f"  sidecar wsgate_sessions_total = {side.metric('wsgate_sessions_total'):.0f}")
            ends = side.audit("session_end")
            if ends:
                e = ends[-1]
                print(f"  audit   user={e['user']} cluster={e['cluster']} up={e['bytes_up']} "
                      f"down={e['bytes_down']} close={e['close_code']} ({e['close_reason']})")
            if counters.get("wsgate_tokens_rewritten_total", 0) < 2 or not ends:
                fail("counters or audit lines missing")
            if ALICE in gw.log() or ALICE in side.log():
                fail("a token reached a log")
            ok("counters and audit lines recorded; no token in Envoy's or the sidecar's logs")

            step("the gateway is killed (SIGKILL) mid-scp and started again; the copy goes on")
            dst2 = work / "copied-across-a-crash.bin"
            scp[-1] = f"{sshd.user}@wsgate-target:{dst2}"
            # Throttled (scp -l, in Kbit/s) so that the copy is still under way when Envoy dies.
            slow = [scp[0], "-l", "40000", *scp[1:]]
            p = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 env={**os.environ, **env})
            deadline = time.monotonic() + 30
            while not (dst2.exists() and dst2.stat().st_size > (2 << 20)):
                if p.poll() is not None or time.monotonic() > deadline:
                    fail("the throttled scp did not get under way")
                time.sleep(0.05)
            gw.kill()
            print(f"  Envoy killed with {dst2.stat().st_size >> 20} MiB copied")
            time.sleep(1)
            gw.restart()
            print("  Envoy started again on the same ports")
            try:
                code = p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                fail("scp did not finish after the gateway came back")
            err = p.stderr.read().decode()
            if code != 0:
                fail(f"scp failed (exit {code}): {err.strip()}")
            for line in err.splitlines():
                if line.startswith("wsgate: "):
                    print(f"  {line.strip()}")
            a, b = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, dst2))
            print(f"  sha256 local  {a}\n  sha256 remote {b}")
            if a != b:
                fail("hashes differ")
            if not side.audit("session_resumed"):
                fail("the sidecar audited no resume")
            ok("the session survives the gateway's crash: scp completes, hashes equal, one session resumed")
        finally:
            for p in (gw, side, sshd):
                if p is not None:
                    p.stop()
    print("\nwsgate demo: all good —")
    for claim in proved:
        print(f"  • {claim}")
    print("Everything started by the demo has been stopped.")


if __name__ == "__main__":
    main()
