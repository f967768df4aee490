"""Figures 5-7 (evaluation/system.py): the cost model's numbers per scenario, the return on
offload, and the command on the tiny pack."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.costmodel import Profile
from evaluation.sweep import sweep
from evaluation.system import system_results


def profile(device: str, models: dict, power_w: float | None) -> Profile:
    return Profile(device, {m: {"latency_ms": {"10": t}} for m, t in models.items()}, power_w, meta={"power_source": "test"})


def test_system_results_costs_and_roi():
    rng = np.random.default_rng(0)
    n, c = 400, 10
    y = rng.integers(0, c, n)
    edge_logits = rng.normal(size=(n, c))
    good = np.eye(c)[y] * 5 + rng.normal(size=(n, c))  # near-edge models right on most frames
    partition = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]
    res = sweep(edge_logits, y, partition, 2, [0.9, 0.5], edge_name="3H", generalists={"6H": good}, specialists={"4H experts": good})
    edge = profile("edge", {"3H": 40.0, "4H": 60.0, "6H": 90.0}, 10.0)
    near = profile("near", {"4H": 20.0, "6H": 30.0, "4H expert": 25.0}, 30.0)
    s = system_results(res, edge, near, {"6H": "6H"}, {"4H experts": "4H expert"}, batch=10, expert_shape="4H")
    # Figure 5: the experts are held against Edge-Only and Near-Edge-Only of the 4H generalist
    f5 = s["fig5"]["models"]["4H expert"]
    assert f5["reference"] == "4H" and f5["near_edge_only"]["T_ms"] == 20.0
    a = res["alpha"][0.9]
    assert f5["co_inference"][0.9]["T_ms"] == pytest.approx(40.0 + 25.0 * a)
    # Figure 7: gain over Edge-Only 3H per added ms / mJ per frame
    r = s["fig7"]["specialist co-inference 3H->4H experts"][0.9]
    gain = 100 * (res["specialist_coinference"]["4H experts"][0.9] - res["edge_only"]["3H"])
    assert r["gain_pt"] == pytest.approx(gain) and gain > 0
    assert r["pt_per_ms"] == pytest.approx(gain / (2.5 * a))
    assert r["pt_per_mJ"] == pytest.approx(gain / (30.0 * 2.5 * a))
    # Figure 6: normalised to Edge-Only 3H per frame
    near6 = next(p for p in s["fig6"] if p["kind"] == "near-edge-only" and p["label"] == "6H")
    assert near6["T_norm_3H"] == pytest.approx(30.0 / 40.0) and near6["E_norm_3H"] == pytest.approx(30.0 * 30.0 / (10.0 * 40.0))


def test_system_figures_command_on_tiny_pack(tiny_pack, tmp_path):
    from evaluation.cli import main

    args = ["system-figures", "--pack", str(tiny_pack), "--profile-edge", "jetson-orin-nano", "--profile-near", "jetson-agx-orin"]
    assert main([*args, "--out", str(tmp_path), "--max-frames", "64", "--taus", "0.9,0.3"]) == 0
    for f in ("fig5.png", "fig6.png", "fig7.png"):
        assert (tmp_path / f).stat().st_size > 0
    s = json.loads((tmp_path / "system.json").read_text())
    assert "Table 1, mapped by head count" in s["rests_on"] and "37 W x latency" in s["rests_on"]
    assert set(s["fig5"]["models"]) == {"4H", "4H compact expert"}  # the tiny pack's experts are tails on the trunk
    assert set(s["fig7"]) == {"generalist co-inference 3H->4H", "specialist co-inference 3H->4H experts"}
    assert "Rests on" in (tmp_path / "system.md").read_text()
