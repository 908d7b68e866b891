#!/usr/bin/env python3
"""`make soak`: concurrent ssh sessions through the whole path, every byte hashed at both ends.

The path: real `ssh` → `wsgate proxy` (token as a Kubernetes subprotocol entry) → real Envoy
with the filter (TLS, token rewrite, routing by cluster) → `wsgate-sidecar` → a throwaway `sshd`,
all on loopback. `--sessions` workers each run ssh sessions back to back until `--seconds` are
up. In every session a file of random bytes goes up `--repeat` times (sshd's side hashes it with
`sha256sum`) while the same file comes down `--repeat` times (hashed here), both at once.

Counted: sessions, bytes each way, corrupted transfers (a hash that differs), unexpected closes
(ssh exiting non-zero, or a sidecar audit line other than a normal end: `client_closed` or
`target_closed`, whichever side hung up first). Sampled every second:
the sidecar's RSS and open fds. It fails (exit 1) on any corruption or unexpected close, if the
sidecar's RSS grows past `--rss-slack-mib` between the first and the last quarter of the run,
or if its fds do not come back to where they started. `make test` runs a short version
(testenv/e2e/test_soak.py); the figures of a full run go in docs/testing.md (Soak).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed.certs import make_tls  # noqa: E402
from testbed.envoy import Gateway  # noqa: E402
from testbed.sidecar import ALICE, NORMAL_ENDS, Sidecar, standard_args  # noqa: E402
from testbed.sshd import Sshd  # noqa: E402
from testbed.wsgate import proxy_command  # noqa: E402


@dataclass
class Tally:
    sessions: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    corrupted: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def one_session(sshd: Sshd, px: str, data: Path, repeat: int, want: str, tally: Tally) -> None:
    """Up and down at once: the remote side streams the file down while hashing what comes up."""
    remote = f"for i in $(seq {repeat}); do cat {data}; done & sha256sum >&2; wait"
    p = subprocess.Popen(sshd.ssh_command(px, remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(p.stderr.read()))
    reader.start()

    def feed() -> None:
        try:
            with open(data, "rb") as f:
                chunk_src = f.read()
            for _ in range(repeat):
                p.stdin.write(chunk_src)
            p.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    down = hashlib.sha256()
    n = 0
    while chunk := p.stdout.read1(1 << 20):
        down.update(chunk)
        n += len(chunk)
    writer.join()
    reader.join()
    code = p.wait()
    err = b"".join(errors).decode(errors="replace")
    found = re.search(r"\b([0-9a-f]{64})  -", err)  # sha256sum's line among ssh's and wsgate's
    up_hash = found.group(1) if found else ""
    with tally.lock:
        tally.sessions += 1
        if code != 0:
            tally.unexpected.append(f"ssh exited {code}: {err.strip()[-300:]}")
            return
        tally.bytes_down += n
        tally.bytes_up += data.stat().st_size * repeat
        if down.hexdigest() != want:
            tally.corrupted.append(f"down: {n} bytes, sha256 {down.hexdigest()}")
        if up_hash != want:
            tally.corrupted.append(f"up: sshd's sha256 {up_hash!r}")


def soak(work: Path, sessions: int, seconds: float, mib: int, repeat: int, rss_slack_mib: float) -> dict:
    tls = make_tls(work)
    data = work / "data.bin"
    data.write_bytes(os.urandom(mib << 20))
    want = hashlib.sha256(data.read_bytes() * repeat).hexdigest()

    sshd = Sshd(work / "sshd").start()
    sc = Sidecar(work / "sidecar", standard_args(work, f"127.0.0.1:{sshd.port}")).start()
    config = {"routes": [{"name": "skypilot-ssh", "prefix": "/kubernetes-pod-ssh-proxy",
                          "clusterQueryParam": "cluster_name", "allowedClusters": ["prod"]}]}
    gw = Gateway(work / "gateway", json.dumps(config), sc.port, tls, quiet=True).start()
    try:
        token = work / "token"
        token.write_text(ALICE + "\n")
        px = proxy_command(f"https://localhost:{gw.ports['tls']}", "prod", "--ca-file", str(tls.ca_pem),
                           "--token-file", str(token), "--token-in-subprotocol")
        fds_before = sc.open_fds()
        samples: list[tuple[float, int, int]] = []  # (t, rss KiB, fds)
        tally = Tally()
        start = time.monotonic()
        deadline = start + seconds

        def worker() -> None:
            while time.monotonic() < deadline:
                one_session(sshd, px, data, repeat, want, tally)

        threads = [threading.Thread(target=worker) for _ in range(sessions)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - start, sc.rss_kib(), sc.open_fds()))
            time.sleep(1)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start

        ends = sc.audit("session_end")
        # Either side may hang up first once ssh is done: both are a normal end (1000).
        odd = [e for e in ends if e.get("close_reason") not in NORMAL_ENDS]
        tally.unexpected += [f"sidecar closed {e.get('close_reason')} ({e.get('close_code')})" for e in odd]
        fds_after = sc.wait_open_fds(fds_before, timeout=10)
        quarter = max(1, len(samples) // 4)
        first = [rss for _, rss, _ in samples[:quarter]]
        last = [rss for _, rss, _ in samples[-quarter:]]
        res = {
            "sessions_at_once": sessions,
            "seconds": round(elapsed, 1),
            "sessions": tally.sessions,
            "audited_sessions": len(ends),
            "mib_up": round(tally.bytes_up / 2**20),
            "mib_down": round(tally.bytes_down / 2**20),
            "mb_per_s_both_ways": round((tally.bytes_up + tally.bytes_down) / elapsed / 1e6, 1),
            "corrupted": tally.corrupted,
            "unexpected_closes": tally.unexpected,
            "sidecar_rss_mib_first_quarter_max": round(max(first) / 1024, 1),
            "sidecar_rss_mib_last_quarter_max": round(max(last) / 1024, 1),
            "sidecar_rss_mib_median": round(statistics.median(r for _, r, _ in samples) / 1024, 1),
            "sidecar_fds_before": fds_before,
            "sidecar_fds_peak": max(f for _, _, f in samples),
            "sidecar_fds_after": fds_after,
            "envoy_rss_mib": round(gw.rss_kib() / 1024, 1),
        }
        problems = []
        if tally.corrupted:
            problems.append(f"{len(tally.corrupted)} corrupted transfers")
        if tally.unexpected:
            problems.append(f"{len(tally.unexpected)} unexpected closes")
        if max(last) - max(first) > rss_slack_mib * 1024:
            problems.append(f"sidecar RSS grew {(max(last) - max(first)) / 1024:.1f} MiB")
        if fds_after > fds_before:
            problems.append(f"sidecar fds {fds_before} → {fds_after}")
        if len(ends) != tally.sessions:
            problems.append(f"{tally.sessions} ssh sessions but {len(ends)} audited")
        if ALICE in sc.log() or ALICE in gw.log():
            problems.append("the token reached a log")
        res["problems"] = problems
        return res
    finally:
        gw.stop()
        sc.stop()
        sshd.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=int(os.environ.get("SOAK_SESSIONS", 8)),
                    help="ssh sessions at once (env SOAK_SESSIONS)")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 180)),
                    help="how long to keep starting sessions (env SOAK_SECONDS)")
    ap.add_argument("--mib", type=int, default=8, help="size of the file each session moves")
    ap.add_argument("--repeat", type=int, default=4, help="times the file goes each way per session")
    ap.add_argument("--rss-slack-mib", type=float, default=8.0,
                    help="allowed sidecar RSS growth, first quarter → last quarter")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsgate-soak-") as d:
        res = soak(Path(d), a.sessions, a.seconds, a.mib, a.repeat, a.rss_slack_mib)
    print(json.dumps(res, indent=1))
    if res["problems"]:
        print("soak FAILED: " + "; ".join(res["problems"]), file=sys.stderr)
        sys.exit(1)
    print(f"soak passed: {res['sessions']} sessions, {res['mib_up']} MiB up and {res['mib_down']} MiB down "
          f"hashed, 0 corrupted, 0 unexpected closes, sidecar RSS {res['sidecar_rss_mib_first_quarter_max']} → "
          f"{res['sidecar_rss_mib_last_quarter_max']} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
