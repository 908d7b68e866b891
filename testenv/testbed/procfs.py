"""What /proc says about a test-bed process: memory, CPU time, open file descriptors."""
from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
