"""The `wsgate` client binary, for tests and the demo."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WSGATE = Path(os.environ.get("WSGATE_CLIENT", ROOT / "target" / "release" / "wsgate"))


def proxy_command(server: str, cluster: str, *flags: str) -> str:
    """A ProxyCommand line running `wsgate proxy` (quoted for the shell ssh uses)."""
    if not WSGATE.exists():
        raise RuntimeError(f"{WSGATE} missing: `make client` (make test does)")
    return " ".join(shlex.quote(x) for x in [str(WSGATE), "proxy", server, cluster, *flags])
