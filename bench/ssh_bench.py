#!/usr/bin/env python3
"""`make bench` (first part: SSH end to end). Pushes N MiB through `ssh host 'cat >/dev/null'`
on loopback, directly and through each wsgate path, in the same run, several rounds, and prints
a Markdown table of medians, min–max and ratios to direct ssh (also written to
bench/results-ssh.md). Also: `ssh host true` setup time and the sidecar's CPU seconds per GiB.

Paths: direct sshd; `wsgate proxy` → wsgate-sidecar; `wsgate proxy` → Envoy + filter (TLS) →
sidecar; SkyPilot's own client (`websocket_proxy.py`) → Envoy → sidecar.

These machines are noisy: compare ratios within one run. BENCH_MIB (default 1024) and
BENCH_ROUNDS (default 3) set the size.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testenv"))

from testbed.certs import make_tls  # noqa: E402
from testbed.envoy import Gateway, free_port  # noqa: E402
from testbed.sidecar import ALICE, Sidecar, standard_args  # noqa: E402
from testbed.sshd import Sshd  # noqa: E402
from testbed.wsgate import proxy_command  # noqa: E402

MIB = int(os.environ.get("BENCH_MIB", "1024"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-") as d:
        work = Path(d)
        tls = make_tls(work)
        sshd = Sshd(work / "sshd").start()
        side = Sidecar(work / "sidecar", standard_args(work, f"127.0.0.1:{sshd.port}")).start()
        tls_port = free_port()
        config = {"redirectGuard": {"httpsPort": tls_port},
                  "routes": [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
                              "clusterQueryParam": "cluster_name"}]}
        gw = Gateway(work / "envoy", json.dumps(config), side.port, tls, tls_port).start()
        sky_python = ROOT / ".venv-skypilot" / "bin" / "python"
        sky_script = next((ROOT / ".venv-skypilot").glob("lib/python*/site-packages/sky/templates/websocket_proxy.py"), None)
        env = {"WSGATE_TOKEN": ALICE, "SKYPILOT_SERVICE_ACCOUNT_TOKEN": ALICE,
               "SSL_CERT_FILE": str(tls.ca_pem), "HOME": str(work)}
        paths: dict[str, str | None] = {
            "direct ssh": None,
            "wsgate proxy → sidecar": proxy_command(f"http://127.0.0.1:{side.port}", "prod"),
            "wsgate proxy → Envoy+filter → sidecar": proxy_command(f"https://localhost:{gw.ports['tls']}", "prod",
                                                                   "--ca-file", str(tls.ca_pem)),
        }
        if sky_script:
            paths["SkyPilot client → Envoy+filter → sidecar"] = f"{sky_python} {sky_script} https://localhost:{gw.ports['tls']} prod"

        def ssh_cmd(px: str | None, *remote: str) -> list[str]:
            if px is None:
                cmd = sshd.ssh_command("none", *remote)
                i = cmd.index("ProxyCommand=none")
                return cmd[: i - 1] + ["-p", str(sshd.port)] + cmd[i + 1 :]
            return sshd.ssh_command(px, *remote)

        def run_ssh(px: str | None, *remote: str, stdin=subprocess.DEVNULL) -> None:
            cmd = ssh_cmd(px, *remote)
            if px is None:
                cmd[-1 - len(remote)] = f"{sshd.user}@127.0.0.1"
            r = subprocess.run(cmd, stdin=stdin, capture_output=True, env={**os.environ, **env}, timeout=900)
            if r.returncode != 0:
                raise SystemExit(f"bench: ssh failed: {r.stderr.decode()}")

        results = {}
        for name, px in paths.items():
            results[name] = {"mbps": [], "setup_ms": [], "side_cpu": [], "client_cpu": []}
        for rnd in range(ROUNDS):
            for name, px in paths.items():
                # Setup time: `ssh host true`, median of 5.
                t = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    run_ssh(px, "true")
                    t.append((time.perf_counter() - t0) * 1000)
                results[name]["setup_ms"].append(statistics.median(t))
                side0, cli0 = cpu_seconds(side.proc.pid), children_cpu()
                t0 = time.perf_counter()
                src = subprocess.Popen(["head", "-c", f"{MIB}M", "/dev/zero"], stdout=subprocess.PIPE)
                run_ssh(px, "cat > /dev/null", stdin=src.stdout)
                src.wait()
                secs = time.perf_counter() - t0
                gib = MIB / 1024
                results[name]["mbps"].append(MIB * 1.048576 / secs)
                results[name]["side_cpu"].append((cpu_seconds(side.proc.pid) - side0) / gib)
                results[name]["client_cpu"].append((children_cpu() - cli0) / gib)
                print(f"round {rnd + 1}/{ROUNDS} {name}: {MIB * 1.048576 / secs:.0f} MB/s", file=sys.stderr, flush=True)
        gw.stop()
        side.stop()
        sshd.stop()

    direct = statistics.median(results["direct ssh"]["mbps"])
    lines = [
        f"## SSH end to end ({MIB} MiB of zeros through `ssh host 'cat >/dev/null'`, {ROUNDS} rounds, loopback)",
        "",
        "| path | MB/s median (min–max) | vs direct | setup ms (median) | sidecar CPU-s/GiB | ssh+client CPU-s/GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = statistics.median(r["mbps"])
        side_cpu = statistics.median(r["side_cpu"]) if name != "direct ssh" else 0.0
        lines.append(
            f"| {name} | {m:.0f} ({min(r['mbps']):.0f}–{max(r['mbps']):.0f}) | {m / direct:.0%} | "
            f"{statistics.median(r['setup_ms']):.0f} | {side_cpu:.2f} | {statistics.median(r['client_cpu']):.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = ROOT / "bench" / "results-ssh.md"
    out.write_text(f"<!-- written by `make bench` on {time.strftime('%Y-%m-%d %H:%M')} -->\n" + table)
    print(f"written to {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
