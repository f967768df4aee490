"""The quality band (askexpert/quality.py) of a pack made before packs recorded one: its validation
split drawn again from its recipe (seed, val_fraction) and run through the pack's own models, the
weights a node serves; no training. The validation alpha it finds is checked against the one the
trainer recorded when it chose tau (`training.default_tau.val_alpha_pct`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from askexpert.backends import open_backend
from askexpert.pack import Pack, write_manifest
from askexpert.quality import QualityBand, expected_band
from askexpert.routing import decide
from trainer.data import validation_split

ALPHA_AGREEMENT_PT = 0.1  # the trainer's fp32 batches and the runtime's may gate a few frames at tau differently


def validation_band(pack: Pack) -> QualityBand:
    m = pack.manifest
    val = validation_split(m.dataset, m.training.get("recipe", {}))
    backend = open_backend("torch")
    edge = backend.classifier(pack, m.generalist)(val.images)
    d = decide(edge, m.partition, m.k)
    off = np.flatnonzero(d.offloaded(m.tau))
    expert_labels = np.full(len(edge), -1)
    expert_labels[off] = backend.experts(pack, m.experts)(val.images[off], list(d.expert[off])).argmax(axis=1)
    band = expected_band(edge, expert_labels, m.partition, m.k, m.tau)
    recorded = m.training.get("default_tau", {}).get("val_alpha_pct")
    if recorded is not None and abs(100 * band.alpha.expected - recorded) > ALPHA_AGREEMENT_PT:
        raise SystemExit(f"validation alpha {100 * band.alpha.expected:.2f}% != the trainer's {recorded}%: not the pack's validation split")
    return band


def record_band(pack_dir: str | Path) -> QualityBand:
    """Write the band into the pack's manifest (its version changes: the manifest is hashed)."""
    pack = Pack.load(pack_dir)
    band = validation_band(pack)
    write_manifest(Path(pack_dir), pack.manifest.model_copy(update={"quality": band}))
    return band
