"""What this machine's CPU does, read once: the trainer and the torch backend choose bf16 by it,
the backends their thread counts."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively (measured here: about 2x for ViT inference,
    1.15-1.4x for training); elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def usable_cores() -> int:
    """Cores this process may run on (a container's cpuset counts, not the host's cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Inference threads when the `threads` setting is 0: half the usable cores, at least one.
    An edge and a hub on one box then each get their half, and a lone process keeps cores for
    the threads around inference (source, MQTT, the gate) and the broker: with every core in
    inference, a 2-core box gave an edge's labels p99 23 ms at 200 frames/s, with one 13 ms
    (bench/paced_latency.py, torch fp32)."""
    return max(1, usable_cores() // 2)
