"""A small run of `make bench`'s harness (bench/bench.py --smoke): every part runs against the
real components and the report has every table and goal, so the benchmark cannot rot between
full runs. Figures from a smoke run mean nothing; they are not asserted."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_run_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = out.read_text()
    for title in ("## 1. Bridge", "## 2. SSH end to end", "## 3. Filter overhead in Envoy",
                  "## 4. Sidecar scale", "## 5. Resumption: its cost", "## 5b. Resumption", "## Goals"):
        assert title in report
    for row in ("| raw TCP (no bridge) |", "| wsgate proxy → wsgate-sidecar |",
                "| python websockets client → python bridge |", "| direct ssh |",
                "| masking relay (copy + RFC 6455 masking: a WebSocket bridge's floor) |",
                "| wsgate proxy → Envoy+filter → sidecar |", "| no filter |", "| wsgate filter (Wasm) |",
                "| Lua filter (token rewrite only) |", "| Sidecar CPU per GiB |",
                "| wsgate proxy --no-resume → wsgate-sidecar |", "| wsgate proxy --no-resume → sidecar |", "| Resumption's cost to bridge throughput (median of",
                "| cut → a byte written after it echoed |"):
        assert row in report, row


def test_the_medians_interval_is_the_textbook_order_statistics(monkeypatch):
    """The resumption cost's 95 % interval: the sign test's ranks from the usual tables (n = 20:
    6 and 15; 40, the default pairs: 14 and 27; 100: 40 and 61); too few figures give their
    range, named so."""
    monkeypatch.syspath_prepend(str(ROOT / "testenv"))
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from bench import median_interval

    for n, lo, hi in ((20, 6, 15), (40, 14, 27), (100, 40, 61), (6, 1, 6)):
        figures = [float(x) for x in range(n, 0, -1)]
        assert median_interval(figures) == ("95 % interval", lo, hi), n
    assert median_interval([3.0, 1.0, 2.0]) == ("range", 1.0, 3.0)
