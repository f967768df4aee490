"""The label-free quality band: the rule, the reference pack's band, and the clean test split inside it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from askexpert.pack import Pack
from askexpert.quality import SlidingShare, band, outside
from askexpert.routing import decide

PACK = Path(__file__).resolve().parents[1] / "packs" / "fashion-mnist"


def test_band_is_the_binomial_spread_of_the_window_and_the_validation_estimate():
    s = band(0.5, window=400, val_items=2000)
    half = 4 * math.sqrt(0.25 * (1 / 400 + 1 / 2000))
    assert (s.low, s.high) == (round(0.5 - half, 6), round(0.5 + half, 6))
    assert band(0.01, 10, 100).low == 0.0 and band(0.99, 10, 100).high == 1.0  # clipped to shares


def test_a_window_is_judged_only_when_full():
    w = SlidingShare(4)
    for outcome in (True, True, True):
        w.add(outcome)
    assert math.isnan(w.share())
    w.add(False)
    assert w.share() == 0.75
    w.add(False)  # the oldest True leaves
    assert w.share() == 0.5


def stored_test_stream(pack: Pack) -> tuple[np.ndarray, np.ndarray]:
    """Per test frame, offloaded at the pack's tau, and whether its routed expert's label (the form
    hubs serve by default) differs from the edge's top-1: from the logits the pack stores for evaluation."""
    from evaluation.logits import scenarios_from_stored, served_label, stored_logits

    m = pack.manifest
    sc = scenarios_from_stored(pack, stored_logits(pack))
    d = decide(sc["edge_logits"], m.partition, m.k)
    return d.offloaded(m.tau), sc["specialists"][served_label(pack)].argmax(axis=1) != d.edge_label


def watch(pack: Pack, offloaded: np.ndarray, disagrees: np.ndarray) -> list[int]:
    """The frames at which a node watching this stream is out of its band (the edge's own windows)."""
    b = pack.manifest.quality
    alpha, disagreement = SlidingShare(b.alpha.window), SlidingShare(b.disagreement.window)
    out = []
    for i, (off, dis) in enumerate(zip(offloaded.tolist(), disagrees.tolist())):
        alpha.add(off)
        if off:
            disagreement.add(dis)
        if outside(b, alpha.share(), disagreement.share()):
            out.append(i)
    return out


def test_the_reference_pack_records_its_band_at_its_tau_on_validation():
    q = Pack.load(PACK).manifest.quality
    assert q is not None and q.tau == Pack.load(PACK).manifest.tau and q.split == "validation"
    assert q.alpha.val_items == 6000 and q.alpha.low < q.alpha.expected < q.alpha.high
    assert q.disagreement.val_items == round(q.alpha.expected * 6000)  # the offloaded validation frames


def test_the_clean_test_split_stays_inside_the_band():
    pack = Pack.load(PACK)
    offloaded, disagrees = stored_test_stream(pack)
    assert len(offloaded) == 10_000
    assert watch(pack, offloaded, disagrees) == []
    # and the watch can fail: the same stream with every answer overruling the edge leaves the band
    assert watch(pack, offloaded, np.ones_like(disagrees))


@pytest.mark.parametrize("signal", ["alpha", "disagreement"])
def test_outside_names_the_signal_that_left(signal):
    q = Pack.load(PACK).manifest.quality
    shares = {"alpha": q.alpha.expected, "disagreement": q.disagreement.expected}
    assert outside(q, **shares) == []
    shares[signal] = getattr(q, signal).high + 0.01
    assert outside(q, **shares) == [signal]


def live_stream(pack: Pack, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same per-frame signals as `stored_test_stream`, from the pack's models run as an edge
    and a hub run them (torch backend)."""
    from askexpert.backends import open_backend

    m, backend = pack.manifest, open_backend("torch")
    d = decide(backend.classifier(pack, m.generalist)(images), m.partition, m.k)
    off = d.offloaded(m.tau)
    idx = np.flatnonzero(off)
    labels = np.full(len(images), -1)
    labels[idx] = backend.experts(pack, pack.expert_entries("auto"))(images[idx], list(d.expert[idx])).argmax(axis=1)
    return off, labels != d.edge_label


@pytest.mark.slow
def test_the_shifted_stream_leaves_the_band_within_its_first_full_window_and_the_clean_one_does_not():
    """The camera-like shift of the issue "The edge learns from its experts" (askexpert/shift.py,
    its scoring stream) against the same 1500 test images clean."""
    from askexpert.datasets import load_dataset
    from askexpert.shift import shift_images

    pack, n = Pack.load(PACK), 1500
    clean = load_dataset("fashion-mnist", "test").images[:n]
    assert watch(pack, *live_stream(pack, clean)) == []
    out = watch(pack, *live_stream(pack, shift_images(clean, "score")))
    assert out and out[0] < pack.manifest.quality.alpha.window  # frame index: fires within 1000 frames
    print(f"\nshifted stream out of the band from frame {out[0] + 1} on; {len(out)} of {n} frames out")
