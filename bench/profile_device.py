"""Profile this device for the latency/energy cost model: T(b) and E(b) of every model of a pack
across batch sizes, as this device runs them.

    python -m bench.profile_device --pack packs/fashion-mnist [--batches 1,2,4,8,10,16,32,64]
        [--backend auto] [--device cpu] [--precision auto] [--threads 0] [--repeats 20] [--min-seconds 1]
        [--role edge] [--power-w W --power-source TEXT] [--out profiles/NAME.json]

Models, named as the cost model and `python -m evaluation system-figures` look them up: the edge
generalist ("3H/16"), each baseline generalist ("4H/16", "6H/16"), the teacher ("12H/16": packs
do not store it, so it is timed with seeded random weights of its architecture; speed does not
depend on the weights' values), and one expert as the hub runs it, whole ("4H/16 expert") and
compact ("4H/16 compact expert": the shared trunk, then the tail), all frames of a call routed to
that one expert (a hub's call that mixes experts runs each present one: more).

Per model and batch size: the median wall time of one call on b frames (after one warm-up call),
over at least --repeats calls and --min-seconds; energy per call from the first energy reader that
works here (askexpert.energy: RAPL, NVML, Jetson rails), over the same calls, idle draw included.
Where none works the profile lists why, and energy comes from --power-w (with --power-source
saying where that figure comes from) or is left out. Writes profiles/<device>-<backend>-<precision>.json (the format
evaluation.costmodel reads) and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from askexpert.energy import Meter, find_meter


def time_calls(fn: Callable, x: np.ndarray, repeats: int, min_seconds: float, meter: Meter | None) -> tuple[float, float | None]:
    """Median ms per call of fn(x), and mJ per call where a meter is given."""
    fn(x)
    times: list[float] = []
    if meter:
        meter.start()
    t_end = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    energy = meter.stop() * 1000 / len(times) if meter else None
    return float(np.median(times)), energy


def pack_models(pack, be) -> tuple[dict[str, Callable], dict[str, str]]:
    """Every model the pack serves or is compared against, as callables on uint8 frames, and a note
    per model saying what was timed where it is not plainly the pack's file."""
    from askexpert.models import shape_name
    from askexpert.pack import PackError

    m = pack.manifest
    models = {shape_name(m.generalist.arch): be.classifier(pack, m.generalist)}
    notes = {}
    for entry in m.baselines.values():
        models.setdefault(shape_name(entry.arch), be.classifier(pack, entry))
    teacher = teacher_classifier(pack, be)
    if teacher and teacher[0] not in models:
        models[teacher[0]] = teacher[1]
        notes[teacher[0]] = "the teacher: not stored in the pack; timed with seeded random weights of its architecture"
    for form in ("full", "compact"):
        try:
            entries = pack.expert_entries(form)
        except PackError:
            continue
        e = entries[0]
        name = f"{shape_name(e.arch)} {'expert' if e.kind == 'vit' else 'compact expert'}"
        lib = be.experts(pack, [e])
        models[name] = lambda x, lib=lib, k=e.key: lib(x, [k] * len(x))
        notes[name] = (
            f"expert {e.key} as the hub runs it ({'a whole ViT' if e.kind == 'vit' else 'shared trunk, then its tail'}), every frame of a call routed to it"
        )
    return models, notes


def teacher_classifier(pack, be):
    """(name, classifier) of the pack's teacher shape with seeded random weights, or None where the
    manifest does not record the recipe's teacher shape."""
    import torch

    from askexpert.models import ViTArch, build_vit, shape_name
    from askexpert.pack import ModelEntry, Pack, save_weights

    recipe = pack.manifest.training.get("recipe")
    if not isinstance(recipe, dict) or "teacher_shape" not in recipe:
        return None
    a = pack.manifest.generalist.vit_arch
    arch = ViTArch.from_shape(
        recipe["teacher_shape"],
        depth=a.depth,
        patch_size=a.patch_size,
        img_size=a.img_size,
        in_chans=a.in_chans,
        num_classes=a.num_classes,
        head_dim=a.embed_dim // a.num_heads,
    )
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="teacher-"))
    sha = save_weights(build_vit(arch), root / "teacher.safetensors")
    entry = ModelEntry(file="teacher.safetensors", sha256=sha, arch=arch.to_dict())
    return shape_name(arch.to_dict()), be.classifier(Pack(root, pack.manifest), entry)


def device_name(device: str) -> str:
    """The CPU (askexpert.hardware.cpu_name) or the GPU, as speed figures name their device."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    from askexpert.hardware import cpu_name

    return cpu_name()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_device", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default="packs/fashion-mnist")
    p.add_argument("--batches", default="1,2,4,8,10,16,32,64")
    p.add_argument("--backend", default="auto", help="auto (as edge and hub choose) | torch | onnx | tensorrt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: half the usable cores, as edge and hub)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each batch size at least this long (energy readers need it)")
    p.add_argument("--role", default="edge", help="edge | near-edge")
    p.add_argument("--power-w", type=float, default=None, help="where no energy reader works: the device's draw, in W")
    p.add_argument("--power-source", default=None, help="where --power-w comes from (required with it)")
    p.add_argument("--out", default=None, help="profile file (default profiles/<device>-<backend>-<precision>.json)")
    a = p.parse_args(argv)
    if a.power_w is not None and not a.power_source:
        p.error("--power-w needs --power-source: say where the figure comes from")

    from askexpert.backends import open_backend
    from askexpert.hardware import default_threads
    from askexpert.pack import Pack

    pack = Pack.load(a.pack)
    m = pack.manifest
    threads = a.threads or default_threads()
    be = open_backend(a.backend, a.device, threads, a.precision)
    meter, why_not = find_meter(a.device)
    models, notes = pack_models(pack, be)
    batches = [int(b) for b in a.batches.split(",")]
    rng = np.random.default_rng(0)
    spec = m.input
    out: dict = {}
    for name, fn in models.items():
        lat, en = {}, {}
        for b in batches:
            x = rng.integers(0, 256, (b, spec.size, spec.size, spec.channels), dtype=np.uint8)
            ms, mj = time_calls(fn, x, a.repeats, a.min_seconds, meter)
            lat[str(b)] = round(ms, 3)
            if mj is not None:
                en[str(b)] = round(mj, 3)
        out[name] = {"latency_ms": lat, **({"energy_mj": en} if en else {})}
        print(f"{name}: " + ", ".join(f"b={b} {lat[str(b)]:.2f} ms" for b in batches), file=sys.stderr)
    device = device_name(a.device)
    profile = {
        "device": device,
        "role": a.role,
        "backend": be.name,
        "precision": getattr(be, "precision", "auto"),
        "threads": threads if a.device == "cpu" else None,
        "source": f"bench/profile_device.py on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, pack {m.name} "
        f"({spec.size}x{spec.size}x{spec.channels}), median of at least {a.repeats} calls and {a.min_seconds:g} s per batch size",
        "energy_source": meter.source if meter else None,
        "energy_unavailable": [] if meter else why_not,
        "power_w": a.power_w,
        "power_source": a.power_source,
        "models": out,
        "model_notes": notes,
        "interpolation": "piecewise linear between measured batch sizes",
    }
    path = Path(a.out or f"profiles/{slug(device)}-{be.name}-{profile['precision']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps({"profile": str(path), **profile}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
