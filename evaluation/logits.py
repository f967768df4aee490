"""Where the offline evaluation's logits come from: the pack's stored test logits (written by the
trainer), or the pack's models run here, with the live system's backends, on the same frames."""

from __future__ import annotations

import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from askexpert.frames import dataset_frames, fit_frame
from askexpert.models import shape_name
from askexpert.pack import Pack
from askexpert.routing import decide, routed_logits


def pack_logits(
    pack: Pack,
    images: np.ndarray,
    *,
    backend: str = "torch",
    device: str = "cpu",
    batch: int = 256,
    baselines: bool = True,
    edge_logits: np.ndarray | None = None,
    tau: float | None = None,
) -> dict:
    """Logits of a pack's models on uint8 images (N, H, W, C) at the pack's input size.

    Returns {"edge": generalist logits, "routed": each image's routed expert's logits,
    "experts": routed keys, "baselines": {name: logits}}: exactly what Algorithm 1 needs for
    every tau (routing does not depend on tau), computed with the same backend as the live system,
    with the experts hubs serve by default (the manifest's `served_form`).
    With `tau`, experts run only on the frames offloaded at that tau (the other rows are NaN).
    """
    from askexpert.backends import open_backend

    be = open_backend(backend, device)
    m = pack.manifest

    def run(fn) -> np.ndarray:
        return np.concatenate([fn(images[i : i + batch]) for i in range(0, len(images), batch)])

    edge = run(be.classifier(pack, m.generalist)) if edge_logits is None else edge_logits
    d = decide(edge, m.partition, m.k)
    lib = be.experts(pack, pack.expert_entries("auto"))
    keys = np.asarray(d.expert)
    rows = np.flatnonzero(d.offloaded(tau)) if tau is not None else np.arange(len(images))
    routed = np.full(edge.shape, np.nan, dtype=np.float32)
    for i in range(0, len(rows), batch):
        r = rows[i : i + batch]
        routed[r] = lib(images[r], list(keys[r]))
    out = {"edge": edge, "routed": routed, "experts": np.asarray(keys)}
    if baselines:
        out["baselines"] = {name: run(be.classifier(pack, entry)) for name, entry in m.baselines.items()}
    return out


def stored_logits(pack: Pack) -> dict | None:
    """The pack's stored test logits (eval/logits-test.npz, written by the trainer), or None."""
    rel = (pack.manifest.reports.get("logits") or {}).get("file", "eval/logits-test.npz")
    path = pack.root / rel
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {n: z[n] for n in z.files}


def scenarios_from_stored(pack: Pack, z: dict) -> dict:
    """Map the trainer's logits keys onto sweep() arguments.

    Keys: generalist-<shape> (the edge), baseline-<shape> / teacher-<shape> (near-edge
    generalists), <kind>-<expert key> with kind progressive (the pack's experts), static, uniform,
    compact or full (older packs), or <kind>-routed (NaN rows where that kind has no expert) with
    routed-key; labels."""
    m = pack.manifest
    edge_name = shape_name(m.generalist.arch)  # "3H/16": a label; the trainer's keys name the head count only
    edge = z[next(n for n in z if n.startswith("generalist-"))].astype(np.float32)

    def label(shape: str) -> str:  # "4H" -> "4H/16" where the pack's models have head dim 16
        return shape_name(m.baselines[shape].arch) if shape in m.baselines else shape

    gens = {label(n.split("-", 1)[1]): z[n].astype(np.float32) for n in z if n.startswith("baseline-")}
    for n in z:
        if n.startswith("teacher-") and n.split("-", 1)[1] not in gens:
            gens[n.split("-", 1)[1] + " (teacher)"] = z[n].astype(np.float32)
    exp_shape = shape_name(m.experts[0].arch) if m.experts else "?"
    d = decide(edge, m.partition, m.k)
    specs: dict = {}
    for kind, label in (
        ("progressive", f"{exp_shape} experts"),
        ("static", f"{exp_shape} static experts"),
        ("uniform", f"{exp_shape} uniform experts"),
        ("compact", f"{exp_shape} compact experts"),
        ("full", f"{exp_shape} full experts"),
    ):
        per_key = {n.split("-", 1)[1]: z[n].astype(np.float32) for n in z if n.startswith(kind + "-") and n != f"{kind}-routed"}
        if per_key and set(d.expert) <= set(per_key):
            specs[label] = routed_logits(d, per_key)
        elif f"{kind}-routed" in z:
            r = z[f"{kind}-routed"].astype(np.float32)
            if not np.isnan(r).any():
                specs[label] = r
    return {"edge_logits": edge, "y": z["labels"].astype(np.int64), "edge_name": edge_name, "generalists": gens, "specialists": specs}


def served_label(pack: Pack) -> str:
    """The label `scenarios_from_stored` gives the expert form hubs serve by default."""
    exp_shape = shape_name(pack.manifest.experts[0].arch) if pack.manifest.experts else "?"
    return f"{exp_shape} experts" if pack.resolve_form("auto") == "full" else f"{exp_shape} compact experts"


def compute_scenarios(pack: Pack, dataset: str, split: str, max_frames: int | None, backend: str, out: Path) -> dict:
    """The sweep's inputs computed with `backend` on a data set split, saved as logits-computed.npz in `out`."""
    from askexpert.datasets import load_dataset

    data = load_dataset(dataset, split)
    n = len(data) if max_frames is None else min(max_frames, len(data))
    spec = pack.manifest.input
    images = np.stack([fit_frame(image, spec) for _, image, _ in islice(dataset_frames(data), n)])  # as the edge sees them
    t = time.monotonic()
    lg = pack_logits(pack, images, backend=backend)
    print(f"computed logits of {n} {dataset}:{split} images in {time.monotonic() - t:.1f} s", file=sys.stderr)
    np.savez_compressed(
        out / "logits-computed.npz",
        labels=data.labels[:n],
        edge=lg["edge"],
        routed=lg["routed"],
        **{f"baseline-{k}": v for k, v in lg["baselines"].items()},
    )
    return {
        "edge_logits": lg["edge"],
        "y": np.asarray(data.labels[:n]),
        "edge_name": shape_name(pack.manifest.generalist.arch),
        "generalists": lg["baselines"],
        "specialists": {served_label(pack): lg["routed"]},
    }
