"""Latency/energy in the paper's form (section 4.2) from the Table 1 profiles, and the sweep tool."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from askexpert.pack import Pack
from askexpert.routing import decide
from evaluation.costmodel import Profile, _curve, estimate, scenario_costs
from evaluation.logits import scenarios_from_stored, stored_logits
from evaluation.sweep import sweep


def test_table1_profiles_and_formula():
    nano, agx = Profile.load("jetson-orin-nano"), Profile.load("jetson-agx-orin")
    assert nano.latency_ms("3H", 10) == 45.5 and agx.latency_ms("6H", 10) == 27.6  # Table 1, Batch=10
    assert nano.latency_ms("3H", 5) == pytest.approx(22.75)  # interpolated through the origin
    est = estimate(nano, agx, 0.462, batch=10, edge_model="3H", near_model="4H")
    assert est["T_ms"] == pytest.approx(45.5 + 20.0 * 0.462)
    assert est["E_mJ"] == pytest.approx(10.0 * 45.5 + 37.0 * 20.0 * 0.462)
    assert estimate(nano, agx, 0.0)["T_N_ms"] == 0.0
    # the paper's 6H claim at tau 0.9 (alpha 46.2%): about -37% latency, +4% energy vs Edge-Only 6H
    c = scenario_costs(nano, agx, {0.9: 0.462}, near_models=["6H"])["models"]["6H"]["co_inference"][0.9]
    assert 0.60 < c["T_norm"] < 0.68 and 1.0 < c["E_norm"] < 1.08


def test_curve_piecewise_linear_and_extrapolated():
    pts = {"1": 2.0, "4": 5.0}
    assert _curve(pts, 0.5) == pytest.approx(1.0)
    assert _curve(pts, 2.5) == pytest.approx(3.5)
    assert _curve(pts, 6) == pytest.approx(7.0)
    assert Profile.load("raspberry-pi-5").energy_mj("3H", 10) is None


def test_stored_logits_mapping(tiny_pack, tmp_path):
    pack_dir = tmp_path / "pack"
    shutil.copytree(tiny_pack, pack_dir)
    pack = Pack.load(pack_dir)
    rng = np.random.default_rng(0)
    n, c = 50, len(pack.manifest.classes)
    keys = list(pack.experts)
    z = {
        "labels": rng.integers(0, c, n),
        "generalist-3H": rng.normal(size=(n, c)).astype(np.float16),
        "baseline-4H": rng.normal(size=(n, c)).astype(np.float16),
        **{f"progressive-{k}": rng.normal(size=(n, c)).astype(np.float16) for k in keys},
    }
    (pack_dir / "eval").mkdir()
    np.savez_compressed(pack_dir / "eval" / "logits-test.npz", **z)
    sc = scenarios_from_stored(pack, stored_logits(pack))
    assert sc["edge_name"] == "3H" and list(sc["generalists"]) == ["4H"] and list(sc["specialists"]) == ["4H experts"]
    d = decide(sc["edge_logits"], pack.manifest.partition, pack.manifest.k)
    routed = sc["specialists"]["4H experts"]
    for i in range(n):
        assert np.array_equal(routed[i], z[f"progressive-{d.expert[i]}"][i].astype(np.float32))
    res = sweep(
        sc["edge_logits"],
        sc["y"],
        pack.manifest.partition,
        pack.manifest.k,
        [0.5],
        **{k: sc[k] for k in ("edge_name", "generalists", "specialists")},
    )
    assert set(res["specialist_coinference"]) == {"4H experts"}


def test_sweep_tool_computes_logits(tiny_pack, tmp_path):
    from evaluation.cli import main

    assert main(["sweep", "--pack", str(tiny_pack), "--out", str(tmp_path), "--max-frames", "64", "--taus", "0.9,0.2"]) == 0
    res = json.loads((tmp_path / "sweep.json").read_text())
    assert res["n"] == 64 and set(res["alpha"]) == {"0.9", "0.2"}
    assert (tmp_path / "sweep.png").stat().st_size > 0 and (tmp_path / "costs.png").stat().st_size > 0
    assert "Table 4" in (tmp_path / "sweep.md").read_text()
