"""The expert form hubs serve by default: chosen on the validation split (never the test split),
recorded in the manifest, served by `expert-hub run` unless another is asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from askexpert.pack import MANIFEST, Pack
from askexpert.routing import decide
from expert_hub.cli import served_entries
from expert_hub.settings import HubSettings
from trainer.report import FORM_TIE_PT, choose_form, system_acc

PACK = Path(__file__).resolve().parents[1] / "packs" / "fashion-mnist"


def _pack_serving(tmp_path: Path, form: str | None) -> Path:
    """The reference pack's files (linked) with a manifest whose recorded choice is `form`."""
    root = tmp_path / f"pack-{form}"
    root.mkdir()
    for p in PACK.glob("*.safetensors"):
        (root / p.name).symlink_to(p)
    m = json.loads((PACK / MANIFEST).read_text())
    if form is None:
        del m["served_form"]  # a pack made before the choice
    else:
        m["served_form"]["form"] = form
    (root / MANIFEST).write_text(json.dumps(m))
    return root


@pytest.mark.parametrize("chosen", ["full", "compact"])
def test_the_hub_serves_the_manifests_form_by_default_and_the_other_on_request(tmp_path, chosen):
    root = _pack_serving(tmp_path, chosen)
    pack = Pack.load(root)
    forms = {"full": pack.manifest.experts, "compact": pack.manifest.compact_experts}
    assert HubSettings(pack=root).expert_form == "auto"
    assert served_entries(HubSettings(pack=root), pack) == forms[chosen]
    other = "compact" if chosen == "full" else "full"
    assert served_entries(HubSettings(pack=root, expert_form=other), pack) == forms[other]
    assert {e.kind for e in forms["compact"]} == {"tail"} and {e.kind for e in forms["full"]} == {"vit"}


def test_a_pack_without_a_choice_serves_its_whole_experts(tmp_path):
    root = _pack_serving(tmp_path, None)
    pack = Pack.load(root)
    assert served_entries(HubSettings(pack=root), pack) == pack.manifest.experts


def test_the_reference_pack_chose_on_validation():
    """The recorded numbers are the validation split's (6000 images held out of training), and they
    are not the test split's: on the stored test logits the two forms score otherwise."""
    from evaluation.logits import scenarios_from_stored, stored_logits

    m = Pack.load(PACK).manifest
    s = m.served_form
    assert s is not None and s.split == "validation" and s.val_items == 6000 and s.tau == m.tau
    assert m.quality is not None and m.quality.disagreement.val_items == round(m.quality.alpha.expected * 6000)
    sc = scenarios_from_stored(Pack.load(PACK), stored_logits(Pack.load(PACK)))
    d = decide(sc["edge_logits"], m.partition, m.k)
    test_acc = {
        form: system_acc(d.edge_label, d.offloaded(m.tau), sc["specialists"][label], sc["y"])
        for form, label in (("full", "4H/16 experts"), ("compact", "4H/16 compact experts"))
    }
    assert test_acc != s.val_system_top1
    best = max(s.val_system_top1, key=s.val_system_top1.get)
    assert s.form == best or abs(s.val_system_top1["full"] - s.val_system_top1["compact"]) <= FORM_TIE_PT


def test_the_rule_reads_the_logits_it_is_given_and_breaks_ties_by_time():
    """Validation logits where the compact experts answer right and the whole ones wrong: compact,
    whatever its cost; equal answers: the faster form."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400)
    edge = np.full((400, 10), 0.0)
    edge[np.arange(400), (y + 1) % 10] = 1.0  # unsure (softmax far below tau) and wrong: every frame offloads
    right, wrong = np.eye(10)[y] * 5, np.eye(10)[(y + 2) % 10] * 5
    part = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]
    slow_compact = {"full": 0.1, "compact": 0.2}
    c = choose_form(edge, {"full": wrong, "compact": right}, y, part, 2, 0.9, slow_compact)
    assert (c.form, c.val_system_top1, c.val_items) == ("compact", {"full": 0.0, "compact": 100.0}, 400)
    assert choose_form(edge, {"full": right, "compact": right}, y, part, 2, 0.9, slow_compact).form == "full"
    assert choose_form(edge, {"full": right, "compact": right}, y, part, 2, 0.9, {"full": 0.3, "compact": 0.2}).form == "compact"


@pytest.mark.slow
def test_the_recorded_choice_is_what_the_validation_split_gives_again():
    """`trainer served-form`'s numbers, recomputed: the validation split drawn again from the
    pack's recipe, the pack's own weights (about a minute on 2 cores)."""
    from trainer.band import band_of, validation_outputs

    pack = Pack.load(PACK)
    m = pack.manifest
    val, edge, routed = validation_outputs(pack, ["full", "compact"])
    again = choose_form(edge, routed, val.labels, m.partition, m.k, m.tau, m.served_form.per_frame_ms)
    assert again.val_system_top1 == m.served_form.val_system_top1 and again.form == m.served_form.form
    assert band_of(pack, edge, routed[m.served_form.form]) == m.quality
