"""Profile this device for the latency/energy estimate: T(b) of a pack's models across batch sizes.

    python -m bench.profile_device --pack packs/fashion-mnist [--batches 1,2,4,8,10,16,32,64]
                                   [--backend torch] [--device cpu] [--repeats 10] [--out profiles/NAME.json]

Measures, per model, the median wall time of one inference call on b frames (after warm-up): the
edge generalist (e.g. "3H"), each baseline generalist ("4H", "6H") and one expert as the hub runs it
("4H-expert": shared trunk + tail). Writes a profile file in the format of profiles/*.json (usable
by evaluation.costmodel and `python -m evaluation sweep --edge-profile/--near-profile`) and prints it as one JSON
line. Energy: from Intel RAPL when readable (package energy over the timed calls), else left out;
set power_w in the file by hand if you know the board's draw.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def _rapl_uj() -> int | None:
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


def time_calls(fn, x: np.ndarray, repeats: int) -> tuple[float, float | None]:
    """Median ms per call and mJ per call (RAPL) of fn(x)."""
    fn(x)
    times, e0 = [], _rapl_uj()
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    e1 = _rapl_uj()
    energy = (e1 - e0) / 1000 / repeats if e0 is not None and e1 is not None and e1 >= e0 else None
    return float(np.median(times)), energy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_device", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default="packs/fashion-mnist")
    p.add_argument("--batches", default="1,2,4,8,10,16,32,64")
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--name", default=None, help="device name (default: host name and CPU)")
    p.add_argument("--role", default="edge", help="edge | near-edge")
    p.add_argument("--out", default=None, help="profile file (default profiles/<host>.json)")
    p.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: auto, half the cores)")
    a = p.parse_args(argv)

    from askexpert.backends import open_backend
    from askexpert.hardware import default_threads
    from askexpert.models import shape_name
    from askexpert.pack import Pack

    pack = Pack.load(a.pack)
    m = pack.manifest
    be = open_backend(a.backend, a.device, a.threads)
    models = {shape_name(m.generalist.arch): be.classifier(pack, m.generalist)}
    for entry in m.baselines.values():
        models.setdefault(shape_name(entry.arch), be.classifier(pack, entry))
    if m.experts:
        e = m.experts[0]
        lib = be.experts(pack, [e])
        models[f"{shape_name(e.arch)}-expert"] = lambda x, lib=lib, k=e.key: lib(x, [k] * len(x))
    batches = [int(b) for b in a.batches.split(",")]
    rng = np.random.default_rng(0)
    spec = m.input
    out: dict = {}
    for name, fn in models.items():
        lat, en = {}, {}
        for b in batches:
            x = rng.integers(0, 256, (b, spec.size, spec.size, spec.channels), dtype=np.uint8)
            ms, mj = time_calls(fn, x, a.repeats)
            lat[str(b)] = round(ms, 3)
            if mj is not None:
                en[str(b)] = round(mj, 3)
        out[name] = {"latency_ms": lat, **({"energy_mj": en} if en else {})}
        print(f"{name}: " + ", ".join(f"b={b} {lat[str(b)]:.1f} ms" for b in batches), file=sys.stderr)
    host = socket.gethostname()
    profile = {
        "device": a.name
        or f"{host} ({platform.processor() or platform.machine()}, {a.threads or default_threads()} threads, {a.backend}/{a.device})",
        "role": a.role,
        "source": f"bench/profile_device.py on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, pack {m.name} "
        f"({spec.size}x{spec.size}x{spec.channels}), median of {a.repeats} calls",
        "models": out,
        "power_w": None,
        "interpolation": "piecewise linear between measured batch sizes",
        "notes": ["energy_mj from Intel RAPL (CPU package) where present; otherwise set power_w by hand."],
    }
    path = Path(a.out or f"profiles/{host}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps({"profile": str(path), **profile}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
