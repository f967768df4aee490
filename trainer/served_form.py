"""The expert form a pack's hubs serve by default (`expert-hub run --expert-form auto`): its whole
(progressive) experts or its compact ones (tails on the shared trunk), chosen on the validation
split at the pack's tau, never on the test split.

Rule (`trainer.report.choose_form`): the form whose Algorithm 1 top-1 on validation at tau is
higher; where the two lie within FORM_TIE_PT of each other, the one whose expert takes less time
per frame (one expert of each form, timed here on TIMING_FRAMES validation frames, best of
TIMING_REPEATS). The trainer chooses for a new pack in its report step; `trainer served-form --pack
DIR` chooses for an existing one, on its validation split drawn again from its recorded recipe,
with the pack's own weights, and records the choice in its manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from askexpert.pack import Pack, ServedForm, write_manifest
from trainer.report import choose_form

TIMING_FRAMES, TIMING_REPEATS = 256, 5


def time_per_frame_ms(fn: Callable[[object], object], frames) -> float:
    """The fastest of TIMING_REPEATS runs of `fn` on `frames` (after one warm-up), per frame: the
    least disturbed by other work on a shared machine."""
    fn(frames)
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        t = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - t)
    return round(1000.0 * best / len(frames), 4)


def record_served_form(pack_dir: str | Path) -> ServedForm:
    """Choose for an existing pack, on its validation split with its own weights (torch backend),
    and write the choice into its manifest with the quality band of the chosen form's experts (the
    pack's version changes: the manifest is hashed)."""
    from askexpert.backends import open_backend
    from trainer.band import band_of, validation_outputs

    pack = Pack.load(pack_dir)
    m = pack.manifest
    if not m.compact_experts:
        raise SystemExit(f"pack {pack.root} has one expert form only: nothing to choose")
    val, edge, routed = validation_outputs(pack, ["full", "compact"])
    key, backend = m.experts[0].key, open_backend("torch")
    cost = {}
    for form in routed:
        lib = backend.experts(pack, [e for e in pack.expert_entries(form) if e.key == key])
        cost[form] = time_per_frame_ms(lambda x, lib=lib: lib(x, [key] * len(x)), val.images[:TIMING_FRAMES])
    choice = choose_form(edge, routed, val.labels, m.partition, m.k, m.tau, cost)
    quality = band_of(pack, edge, routed[choice.form])
    write_manifest(Path(pack_dir), m.model_copy(update={"served_form": choice, "quality": quality}))
    return choice
