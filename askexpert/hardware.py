"""What this machine's CPU does, read once: the trainer and the torch backend choose bf16 by it
(unless `ATE_CPU_BF16=0` turns it off), the backends their thread counts."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively (on AMX, training steps of the CPU recipe's
    models take about 0.6x their fp32 time: README, `precision`); elsewhere bf16 is emulated and
    slower than fp32. False as well when
    `ATE_CPU_BF16=0` turns CPU bf16 off (`cpu_bf16_switched_off`)."""
    return _cpu_flags_bf16() and not cpu_bf16_switched_off()


def cpu_bf16_switched_off() -> bool:
    """`ATE_CPU_BF16=0` (or false, no, off): run as on a CPU without native bf16, whatever this one
    has; the training autocast and the torch backend's `bf16` then run fp32. Why: bf16 results
    depend on the CPU's kernels (AMX and AVX-512 BF16 round differently) and on batch shapes, so
    runs meant to be equal (2 ranks against 1 process) are compared in fp32, and a developer on
    either kind of CPU sees what the other kind would do (`.ci/run` runs the numerics tests so).
    Read at every call, not cached, so a test can set it."""
    return os.environ.get("ATE_CPU_BF16", "1").strip().lower() in ("0", "false", "no", "off")


@lru_cache(maxsize=1)
def _cpu_flags_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU as benchmarks name it beside their figures (speed differs between kinds):
    its model name, usable cores, and AMX or AVX-512 BF16 where it has them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"unknown CPU, {usable_cores()} cores"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    has = "AMX" if "amx_bf16" in flags else "AVX-512 BF16, no AMX" if "avx512_bf16" in flags else "no native bf16"
    return f"{model}, {usable_cores()} cores, {has}"


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
