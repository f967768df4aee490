"""A short live replay through a real Mosquitto (hub and edge as processes): the scorer's accuracy
equals the offline sweep's at the same tau, frame for frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_edge, start_hub, stop, wait_hub_online

from askexpert.pack import Pack
from askexpert.recording import Recording
from askexpert.routing import decide, offline_labels
from askexpert.settings import CommonSettings
from askexpert.subscriber import LabelSubscriber
from evaluation.logits import pack_logits
from evaluation.render import render_dataset
from evaluation.report import write_report
from evaluation.score import load_truth, score
from evaluation.sweep import sweep

N = 300


@pytest.mark.slow
def test_live_replay_accuracy_equals_offline_sweep(tiny_pack, broker, tmp_path):
    rec_dir = tmp_path / "rec"
    render_dataset("fashion-mnist", "test", rec_dir, fps=1000, max_frames=N)
    rec = Recording(rec_dir)
    images = np.stack([f.image for f in rec.frames()])
    truth, classes = load_truth(f"replay:{rec_dir}")
    pack = Pack.load(tiny_pack)

    lg = pack_logits(pack, images, baselines=True)
    d = decide(lg["edge"], pack.manifest.partition, pack.manifest.k)
    tau = float(np.median(d.conf))  # about half the frames offloaded
    off_labels, off_mask = offline_labels(d, lg["routed"], tau)
    offline_acc = sweep(
        lg["edge"],
        truth,
        pack.manifest.partition,
        pack.manifest.k,
        [tau],
        generalists=lg["baselines"],
        specialists={"experts": lg["routed"]},
    )["specialist_coinference"]["experts"][tau]
    assert 0.3 < off_mask.mean() < 0.7

    hub = start_hub(tiny_pack, broker.url, "--hub-id", "hr")
    col = None
    try:
        wait_hub_online(broker.url, "hr")
        col = LabelSubscriber(CommonSettings(broker=broker.url), "rp1").start()
        summary = run_edge(
            tiny_pack, broker.url, "--node-id", "rp1", "--source", f"replay:{rec_dir}?pace=max", "--tau", repr(tau), "--deadline-ms", "5000"
        )
        assert col.wait(N, idle_timeout=15, timeout=60) == "done"
    finally:
        if col is not None:
            col.stop()
        stop(hub)
    assert summary["frames"] == N and summary["fallback"] == 0

    offline = {i: int(v) for i, v in enumerate(off_labels)}
    rep = score(col.labels, truth, expected=range(N), classes=classes, offline=offline)
    write_report(rep, tmp_path / "report", col.labels)
    assert rep.frames == N and rep.missing == 0 and rep.duplicates == 0
    near = {i for i in range(N) if abs(d.conf[i] - tau) < 1e-5}  # float noise between batchings
    mism = set(rep.offline.mismatch_ids) - near
    assert not mism, f"live labels differ from offline Algorithm 1 on frames {sorted(mism)}"
    if not near:
        assert rep.accuracy == offline_acc
        assert rep.alpha == off_mask.mean()
    else:
        assert abs(rep.accuracy - offline_acc) <= len(near) / N
    # frame ids are the recording's indices; every expert used is one Algorithm 1 routes to
    assert {m.expert for m in col.labels if m.source == "expert"} <= set(d.expert[off_mask])
    assert (tmp_path / "report" / "report.md").is_file()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_default_pack_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from evaluation.cli import build_parser

    monkeypatch.chdir(tmp_path)
    for command in ("demo", "sweep"):
        pack = Path(build_parser().parse_args([command]).pack)
        assert pack.is_absolute() and (pack / "manifest.json").is_file()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_cleans_up(tiny_pack, tmp_path):
    """A replay demo started from another working directory (the package, not the cwd, finds the code)."""
    import json
    import subprocess
    import sys

    render_dataset("fashion-mnist", "test", tmp_path / "rec", fps=1000, max_frames=120)
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = [
        sys.executable,
        "-m",
        "evaluation",
        "demo",
        "--frames",
        "120",
        "--pack",
        str(tiny_pack),
        "--source",
        f"replay:{tmp_path / 'rec'}",
        "--runs",
        str(runs),
        "--tau",
        "0.2",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=elsewhere)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = next(runs.iterdir())
    rep = json.loads((run / "report.json").read_text())
    assert rep["frames"] == 120 and rep["missing"] == 0 and rep["duplicates"] == 0
    assert rep["offline_check"] == "exact" and rep["offline"]["compared"] > 0
    assert len(rep["offline"]["mismatch_ids"]) <= 1  # only float noise right at tau may flip a frame
    assert rep["edge"] == json.loads((run / "edge-summary.json").read_text()) and rep["edge"]["frames"] == 120
    for f in ("report.md", "latency.png", "load.png", "labels.jsonl", "hub.log", "edge.log"):
        assert (run / f).is_file(), f
    assert str(run) in out.stdout.replace("\n", "")
    paced = json.loads((run / "paced" / "report.json").read_text())  # then the same frames paced, for latency
    assert paced["frames"] == 120 and paced["missing"] == 0 and paced["duplicates"] == 0
    words = " ".join(out.stdout.split())  # rich wraps long titles
    assert "paced at 200 frames/s" in words and "as fast as possible" in words
    pids = json.loads((run / "pids.json").read_text())
    assert set(pids) == {"mosquitto", "expert-hub", "edge-node", "edge-node-paced"}
    assert not any(_alive(p) for p in pids.values()), "the demo left processes running"


@pytest.mark.slow
def test_demo_ctrl_c_stops_everything(tiny_pack, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "evaluation", "demo", "--frames", "10000", "--pack", str(tiny_pack), "--runs", str(tmp_path), "--fps", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    pids: dict = {}
    while time.monotonic() < deadline and "edge-node" not in pids:
        time.sleep(0.5)
        runs = list(tmp_path.iterdir())
        if runs and (runs[0] / "pids.json").is_file():
            pids = json.loads((runs[0] / "pids.json").read_text())
    assert "edge-node" in pids, "the demo never started the edge"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode == 130
    time.sleep(0.5)
    assert not any(_alive(p) for p in pids.values()), "Ctrl-C left processes running"
