"""bench/live_vs_model.py at a tiny size: the live system (broker, hub, edge) at Edge-Only, one
co-inference tau and all-offloaded, each beside the cost model's prediction from a profile."""

from __future__ import annotations

import pytest

from bench.live_vs_model import main, predict
from evaluation.costmodel import Profile


def test_predict_formulas():
    p = Profile("box", {"3H": {"latency_ms": {"1": 2.0, "4": 5.0}}, "4H expert": {"latency_ms": {"1": 3.0}}})
    r = predict(p, p, "3H", "4H expert", 0.5, 4)
    assert r["T_exec_ms"] == pytest.approx(5.0 + 6.0)  # T_E(4) + T_N(2), T_N extended linearly past b=1
    assert r["mean_latency_ms"] == pytest.approx(5.0 + 0.5 * 6.0)
    assert r["fps"] == pytest.approx(4000 / 11.0)


@pytest.mark.slow
def test_live_vs_model_tiny(tiny_pack):
    args = ["--profile", "jetson-orin-nano", "--pack", str(tiny_pack), "--taus", "", "--frames", "12", "--fps", "50", "--backend", "torch"]
    out = main(args)
    assert [r["tau"] for r in out["runs"]] == [0.0, 1.0]
    edge_only, all_off = out["runs"]
    assert edge_only["paced"]["alpha"] == 0 and set(edge_only["paced"]["by_source"]) == {"edge"}
    assert all_off["paced"]["alpha"] == 1 and all_off["paced"]["by_source"]["expert"]["frames"] == 12  # an untrained pack is never sure
    for r in out["runs"]:
        assert r["paced"]["missing"] == 0 and r["unpaced"]["missing"] == 0
        assert r["live_over_model"]["mean_latency"] == pytest.approx(
            r["paced"]["mean_latency_ms"] / r["model"]["mean_latency_ms"], rel=1e-2
        )
        assert r["live_over_model"]["fps"] == pytest.approx(r["unpaced"]["fps"] / r["model"]["fps"], rel=1e-2)
