"""The soak (testenv/soak.py, `make soak`) in its short version: concurrent ssh sessions through
Envoy with the filter and the sidecar, every byte hashed at both ends, the sidecar's RSS and fds
watched. The full run's figures are in docs/testing.md (Soak)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soak import soak  # noqa: E402


def test_short_soak_loses_nothing(tmp_path):
    res = soak(tmp_path, sessions=4, seconds=20, mib=4, repeat=4, rss_slack_mib=8)
    assert res["problems"] == [], res
    assert res["sessions"] >= 4 and res["audited_sessions"] == res["sessions"]
    assert res["mib_up"] == res["mib_down"] == res["sessions"] * 16
