"""The scorer on a hand-made label stream: accuracy, alpha, percentiles, duplicates, missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from askexpert.protocol import LabelMsg
from evaluation.report import write_report
from evaluation.results import ExpertLoad, RunScore
from evaluation.score import latency_stats, score


def lab(fid, label, source="edge", expert=None, lat=10.0, edge_label=None, t=1000.0):
    return LabelMsg(
        node="n1",
        frame_id=fid,
        label=label,
        label_name=str(label),
        conf=0.9,
        source=source,
        expert=expert,
        latency_ms=lat,
        t_capture=t + fid * 0.01,
        edge_label=label if edge_label is None else edge_label,
        edge_conf=0.5,
        pack="p",
    )


def stream():
    # truth: frame i has class i % 3
    return [
        lab(0, 0, lat=1.0),  # edge, right
        lab(1, 1, lat=2.0),  # edge, right
        lab(2, 0, lat=3.0),  # edge, wrong (truth 2)
        lab(3, 0, "expert", "0-1", lat=20.0, edge_label=1),  # expert right, edge wrong
        lab(4, 2, "expert", "0-1", lat=30.0, edge_label=1),  # expert wrong, edge right
        lab(5, 2, "expert", "2", lat=40.0, edge_label=0),  # expert right, edge wrong
        lab(6, 1, "edge-fallback", "0-2", lat=1000.0),  # fallback wrong (truth 0)
        lab(3, 1, "expert", "0-1", lat=99.0),  # duplicate: ignored
    ]


TRUTH = np.array([i % 3 for i in range(9)])


def test_counts_accuracy_alpha():
    r = score(stream(), TRUTH, expected=range(9))
    assert r.frames == 7 and r.labels_received == 8 and r.duplicates == 1
    assert r.missing == 2 and r.missing_ids == [7, 8]
    assert r.accuracy == pytest.approx(4 / 7)
    assert r.edge_only_accuracy == pytest.approx(3 / 7)  # frames 0, 1, 4
    assert r.alpha == pytest.approx(4 / 7)
    assert r.fallbacks == 1
    s = r.by_source
    assert (s["edge"].frames, s["expert"].frames, s["edge-fallback"].frames) == (3, 3, 1)
    assert s["edge"].accuracy == pytest.approx(2 / 3)
    assert s["expert"].accuracy == pytest.approx(2 / 3)
    assert s["edge-fallback"].accuracy == 0.0
    load = r.expert_load
    assert load["0-1"] == ExpertLoad(offloaded=2, answered=2, fallback=0, correct=1, scored=2, accuracy=0.5)
    assert load["2"].answered == 1 and load["0-2"].fallback == 1


def test_percentiles_match_numpy_linear():
    r = score(stream(), TRUTH)
    lats = [1.0, 2.0, 3.0, 20.0, 30.0, 40.0, 1000.0]  # the duplicate's 99 ms is not counted
    for p in (50, 95, 99):
        assert r.latency_ms[f"p{p}"] == pytest.approx(np.percentile(lats, p))
    assert r.latency_ms["p50"] == 20.0
    # hand-computed: linear interpolation between order statistics
    assert r.latency_ms["p95"] == pytest.approx(40 + 0.7 * 960)
    assert latency_stats([])["n"] == 0


def test_fps_and_offline_agreement(tmp_path):
    r = score(stream(), TRUTH, offline={0: 0, 1: 1, 2: 0, 3: 0, 4: 1, 5: 2, 6: 2})
    # frames captured 10 ms apart from t=1000.00; the last label lands at 1000.06 + 1.0 s
    assert r.fps == pytest.approx(7 / 1.06)
    assert r.offline.compared == 6  # the fallback is left out
    assert r.offline.mismatch_ids == [4] and not r.offline.equal
    out = write_report(r, tmp_path, stream())
    assert json.loads((out / "report.json").read_text())["frames"] == 7
    assert "alpha" in (out / "report.md").read_text()
    assert (out / "latency.png").stat().st_size > 0 and (out / "load.png").stat().st_size > 0


def test_truth_mapping_and_unknown_labels():
    r = score(stream(), {0: 0, 1: -1, 2: 2})
    assert r.scored == 2 and r.accuracy == 0.5
    assert score([], None).frames == 0


def test_compare_puts_two_reports_side_by_side(tmp_path):
    from evaluation.cli import main
    from evaluation.compare import rows

    a = score(stream(), TRUTH, expected=range(7))
    b = score([m for m in stream() if m.source == "edge"] + [lab(i, 1, "expert", "1", lat=50.0) for i in (3, 4, 5, 6)], TRUTH)
    by_name = {name: (x, y) for name, x, y, _ in rows(a, b)}
    assert by_name["offload proportion alpha"] == (4 / 7, 4 / 7)
    assert by_name["accuracy expert"] == (2 / 3, 0.25)
    assert by_name["latency p50 expert (ms)"] == (30.0, 50.0)
    assert by_name["expert 0-1: offloaded"] == (2, 0) and by_name["expert 1: offloaded"] == (0, 4)
    write_report(a, tmp_path / "a")
    write_report(b, tmp_path / "b")
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a"),
                str(tmp_path / "b" / "report.json"),
                "--names",
                "before,after",
                "--out",
                str(tmp_path / "c.md"),
            ]
        )
        == 0
    )
    md = (tmp_path / "c.md").read_text()
    assert "| metric | before | after | after - before |" in md
    assert "| accuracy expert | 66.67% | 25.00% | -41.67 pp |" in md


def test_scoring_leaves_nothing_retained_on_the_broker(broker, tmp_path):
    """The scorer only listens: no status, no will; a later subscriber to '#' gets no retained message."""
    import time

    from askexpert.settings import CommonSettings
    from askexpert.subscriber import Subscriber
    from evaluation.score import run_score

    settings = CommonSettings(broker=broker.url)
    rep = run_score(settings, "nobody", tmp_path / "r", idle_timeout=0.3, print_table=False)
    assert rep.frames == 0
    late = Subscriber(settings, "#").start()
    time.sleep(0.5)
    late.stop()
    assert late.raw == []


def test_expert_labels_counted_per_hub():
    """`score` says which hub answered how many frames; labels from edges that do not name it: "?"."""
    from dataclasses import replace

    msgs = [replace(m, hub="hub2" if m.frame_id == 5 else "hub1") if m.source == "expert" else m for m in stream()]
    assert score(msgs).by_hub == {"hub1": 2, "hub2": 1}  # the duplicate of frame 3 is not counted
    assert score(stream()).by_hub == {"?": 3}
    from evaluation.report import to_markdown

    assert "| expert labels per hub | hub1 2, hub2 1 |" in to_markdown(score(msgs))


def test_latency_breakdown_by_source():
    """Labels that carry where their latency went are summarised per source and part; labels
    without it (older edges) add nothing."""
    from dataclasses import replace

    msgs = [
        replace(lab(0, 0, lat=5.0), wait_ms=1.0, infer_ms=3.0),
        replace(lab(1, 1, lat=7.0), wait_ms=3.0, infer_ms=3.0),
        replace(lab(3, 0, "expert", "0-1", lat=20.0), wait_ms=1.0, infer_ms=3.0, hub_queue_ms=4.0, hub_infer_ms=6.0, network_ms=5.0),
        lab(2, 2, lat=4.0),  # no breakdown
    ]
    r = score(msgs, TRUTH)
    edge, expert = r.by_source["edge"].latency_parts_ms, r.by_source["expert"].latency_parts_ms
    assert set(edge) == {"wait_ms", "infer_ms"} and edge["wait_ms"]["n"] == 2 and edge["wait_ms"]["p50"] == 2.0
    assert set(expert) == {"wait_ms", "infer_ms", "hub_queue_ms", "hub_infer_ms", "network_ms"}
    assert expert["network_ms"]["p99"] == 5.0 and r.by_source["edge-fallback"].latency_parts_ms == {}
    from evaluation.report import to_markdown

    md = to_markdown(r)
    assert "| expert | hub queue | 4.0 | 4.0 |" in md and "| edge | wait | 2.0 | 3.0 |" in md


def test_a_report_json_reads_back_as_the_same_typed_score(tmp_path):
    """The scorer's result is typed; report.json is its JSON and reads back to an equal object
    (what `compare` does with a run folder), with the parts a run lacks left out."""
    r = score(stream(), TRUTH, expected=range(9), classes=["a", "b", "c"])
    write_report(r, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert "offline" not in data and "tau" not in data and data["missing_ids"] == [7, 8]
    back = RunScore.load(tmp_path)
    assert back == r and back.per_class["b"].n == r.per_class["b"].n
