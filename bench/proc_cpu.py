"""CPU seconds a process has used (user + system, all its threads), from /proc: what the benches
charge to the hub, the broker and the load generator per frame."""

from __future__ import annotations

import os


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of `pid` (this process when None) so far; Linux only."""
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces: cut after it
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
