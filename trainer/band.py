"""The quality band (askexpert/quality.py) of a pack made before packs recorded one: its validation
split drawn again from its recipe (seed, val_fraction) and run through the pack's own models, the
weights a node serves; no training. The validation alpha it finds is checked against the one the
trainer recorded when it chose tau (`training.default_tau.val_alpha_pct`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from askexpert.backends import open_backend
from askexpert.datasets import LabelledImages
from askexpert.pack import Pack, write_manifest
from askexpert.quality import QualityBand, expected_band
from askexpert.routing import decide
from trainer.data import validation_split

ALPHA_AGREEMENT_PT = 0.1  # the trainer's fp32 batches and the runtime's may gate a few frames at tau differently


def validation_outputs(pack: Pack, forms: list[str]) -> tuple[LabelledImages, np.ndarray, dict[str, np.ndarray]]:
    """The pack's validation split, its edge generalist's logits there, and per expert form (`auto`:
    the served one) the routed expert's logits on the frames offloaded at the pack's tau (NaN on
    the others): the weights a node serves, run as the torch backend runs them."""
    m = pack.manifest
    val = validation_split(m.dataset, m.training.get("recipe", {}))
    backend = open_backend("torch")
    edge = backend.classifier(pack, m.generalist)(val.images)
    d = decide(edge, m.partition, m.k)
    off = np.flatnonzero(d.offloaded(m.tau))
    routed = {}
    for form in forms:
        routed[form] = np.full(edge.shape, np.nan, dtype=np.float32)
        routed[form][off] = backend.experts(pack, pack.expert_entries(form))(val.images[off], list(d.expert[off]))
    return val, edge, routed


def band_of(pack: Pack, edge: np.ndarray, routed: np.ndarray) -> QualityBand:
    """The band from `validation_outputs`, checked to be the pack's validation split."""
    m = pack.manifest
    band = expected_band(edge, routed.argmax(axis=1), m.partition, m.k, m.tau)  # read only where offloaded
    recorded = m.training.get("default_tau", {}).get("val_alpha_pct")
    if recorded is not None and abs(100 * band.alpha.expected - recorded) > ALPHA_AGREEMENT_PT:
        raise SystemExit(f"validation alpha {100 * band.alpha.expected:.2f}% != the trainer's {recorded}%: not the pack's validation split")
    return band


def validation_band(pack: Pack) -> QualityBand:
    """The band of the experts the pack's hubs serve by default."""
    _, edge, routed = validation_outputs(pack, ["auto"])
    return band_of(pack, edge, routed["auto"])


def record_band(pack_dir: str | Path) -> QualityBand:
    """Write the band into the pack's manifest (its version changes: the manifest is hashed)."""
    pack = Pack.load(pack_dir)
    band = validation_band(pack)
    write_manifest(Path(pack_dir), pack.manifest.model_copy(update={"quality": band}))
    return band
