"""One round of on-site learning, live through the broker, scored on a stream nothing is tuned on.

    python -m evaluation learn-round [--pack packs/fashion-mnist]    (make learn-round)

In a run folder (runs/learn-<time>/), with a private Mosquitto and one expert hub serving the pack
through a symlink (`pack`, as an operator would deploy it):

  1. before   the edge replays the scoring stream (`dataset:shifted-fashion-mnist:score`) with the pack;
  2. collect  `edge-node collect` keeps what the edge offloads while it replays the collection
              stream (`...:collect`, disjoint: askexpert/shift.py); the experts' answers are scored
              against the truth here (the accuracy of the targets), never shown to the learner;
  3. learn    `trainer learn` writes the new pack version (pack-v2/: same routing, new edge, the old tau);
  4. swap     the edge replays the scoring stream paced; midway the symlink is swapped to pack-v2
              and hub and edge get SIGHUP: every frame must get exactly one label, and the labels
              name the new version from the switch on;
  5. after    the scoring stream again with the new pack, at its tau and at the recalibrated one.

Writes round.json (what `docs/results/edge-learning` quotes) and each replay's report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from askexpert.collected import read_collected
from askexpert.hardware import cpu_name
from askexpert.subscriber import LabelSubscriber
from evaluation import REFERENCE_PACK
from evaluation.demo import Demo, Replay, console
from evaluation.results import RunScore
from evaluation.score import score
from evaluation.shift import edge_top1

SCORE, COLLECT = "dataset:shifted-fashion-mnist:score", "dataset:shifted-fashion-mnist:collect"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn-round", help="collect offloads, learn a new edge model, hot-reload it: before and after, live")
    p.add_argument("--pack", default=str(REFERENCE_PACK))
    p.add_argument("--runs", default="runs")
    p.add_argument("--collect-args", default="", help="extra `edge-node collect` flags (sampling rules), e.g. '--per-class 500'")
    p.add_argument("--learn-args", default="", help="extra `trainer learn` flags, e.g. '--epochs 2'")
    p.add_argument("--swap-fps", type=float, default=500.0, help="pace of the replay that the swap happens in")
    p.add_argument("--swap-at", type=int, default=3000, help="swap after this many labels of that replay")
    p.add_argument("--deadline-ms", type=float, default=5000.0, help="the edges' deadline: long, so a busy box does not fall back")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from askexpert.log import setup_logging
    from askexpert.pack import Pack

    setup_logging("error")
    run_dir = Path(a.runs).resolve() / time.strftime("learn-%Y%m%d-%H%M%S", time.gmtime())
    run_dir.mkdir(parents=True)
    link = run_dir / "pack"
    link.symlink_to(Path(a.pack).resolve())
    old = Pack.load(link.resolve())  # the folder itself: the link moves on in the swap
    demo_args = argparse.Namespace(
        pack=str(link), source=SCORE, frames=0, fps=None, deadline_ms=a.deadline_ms, backend="auto", offline_check="exact", timeout=600.0
    )
    demo, t0 = Demo(demo_args, old, run_dir), time.monotonic()
    try:
        demo.start([old.manifest.tau])
        before = _replay(demo, "before", old.manifest.tau)
        collected, targets = _collect(demo, run_dir, shlex.split(a.collect_args))
        new = Pack.load(_learn(demo, link, collected, run_dir / "pack-v2", shlex.split(a.learn_args)))
        swap = _swap(demo, link, new, a)
        recalibrated = new.manifest.training["learned"][-1]["tau"]["tau"]
        demo.target(SCORE, new, [old.manifest.tau, recalibrated])
        after_same = _replay(demo, "after-same-tau", old.manifest.tau)
        after = _replay(demo, "after-recalibrated-tau", recalibrated)
    finally:
        demo.stop()
    out = {
        "scoring_stream": SCORE,
        "collection_stream": COLLECT,
        "packs": {"before": old.version, "after": new.version, "pack_id": old.pack_id},
        "before": _numbers(before),
        "after_same_tau": _numbers(after_same),
        "after_recalibrated_tau": _numbers(after),
        "targets": targets,
        "learn": new.manifest.training["learned"][-1],
        "clean_test_top1": {"before": _clean(old), "after": _clean(new)},
        "swap": swap,
        "cpu": cpu_name(),
        "wall_s": round(time.monotonic() - t0, 1),
        "command": "python -m evaluation learn-round "
        + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(a).items() if k not in ("func", "command")),
    }
    (run_dir / "round.json").write_text(json.dumps(out, indent=1) + "\n")
    console.print_json(
        data={k: out[k] for k in ("before", "after_same_tau", "after_recalibrated_tau", "targets", "clean_test_top1", "swap")}
    )
    console.print(f"round folder: {run_dir}")
    ok = all(not r.missing and r.duplicates == 0 for r in (before, after_same, after)) and swap["missing"] == swap["duplicates"] == 0
    return 0 if ok else 1


def _replay(demo: Demo, name: str, tau: float) -> RunScore:
    """The whole of the demo's current source at `tau`, scored and checked against Algorithm 1 offline."""
    demo.a.frames = len(demo.truth)
    r = Replay(tau=tau, node=f"learn-{name}", name=f"edge-{name}", out=demo.run_dir / name, frames=demo.a.frames, fps=None)
    rep = demo.replay(r)
    rep.save(r.out)
    return rep


def _numbers(rep: RunScore) -> dict:
    return {
        "tau": rep.tau,
        "edge_top1": _pct(rep.edge_only_accuracy),
        "alpha": _pct(rep.alpha),
        "system_top1": _pct(rep.accuracy),
        "system_top1_offline": _pct(rep.offline_accuracy),  # Algorithm 1 with the same models: the live run without its fallbacks
        "frames": rep.frames,
        "fallbacks": rep.fallbacks,
        "missing": rep.missing,
        "duplicates": rep.duplicates,
        "equal_to_offline": f"{rep.offline.agree}/{rep.offline.compared}" if rep.offline else None,
    }


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)


def _clean(pack) -> float:
    """The pack's edge model on the clean test split (did it forget?)."""
    from askexpert.datasets import load_fashion_mnist

    test = load_fashion_mnist("test")
    return edge_top1(pack.root, test.images, test.labels)


def _collect(demo: Demo, run_dir: Path, extra: list[str]) -> tuple[Path, dict]:
    """The collection stream through the edge with `edge-node collect` beside it."""
    out, node = run_dir / "collected", "learn-collect"
    argv = demo.py + ["edge_node.cli", "collect", "--node-id", node, "--out", str(out), "--broker", demo.broker, "--pack", demo.a.pack]
    proc = demo.children.start("collector", argv + extra, run_dir / "collector.log", demo.env)
    deadline = time.monotonic() + 120
    while _state(out) != "collecting":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the collector did not start (code {proc.poll()}); see collector.log")
        time.sleep(0.2)
    demo.target(COLLECT, demo.pack, [demo.pack.manifest.tau])
    rep = _replay(demo, "collect", demo.pack.manifest.tau)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    col = read_collected(out)
    truth = demo.truth[col.column("frame_id")]
    targets = {
        "kept": len(col),
        "counts": col.meta["counts"],
        "expert_label_accuracy": round(100 * float((col.column("label") == truth).mean()), 2),
        "edge_label_accuracy_same_frames": round(100 * float((col.column("edge_label") == truth).mean()), 2),
        "collect_replay": _numbers(rep),
    }
    return out, targets


def _state(out: Path) -> str | None:
    try:
        return json.loads((out / "meta.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def _learn(demo: Demo, pack: Path, collected: Path, out: Path, extra: list[str]) -> Path:
    argv = demo.py + ["trainer.cli", "learn", "--pack", str(pack), "--collected", str(collected), "--out", str(out), *extra]
    with console.status("trainer learn: fine-tuning the edge model on the collected frames..."):
        proc = subprocess.run(argv, env=demo.env, capture_output=True, text=True)
    (demo.run_dir / "learn.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"trainer learn failed (code {proc.returncode}); see learn.log")
    return out


def _swap(demo: Demo, link: Path, new, a: argparse.Namespace) -> dict:
    """The scoring stream, paced; after `swap_at` labels the pack link moves to `new` and hub and
    edge get SIGHUP. Every frame must get one label; the edge's own labels switch version once."""
    demo.target(SCORE, demo.pack, [demo.pack.manifest.tau])
    out, node, n = demo.run_dir / "swap", "learn-swap", len(demo.truth)
    out.mkdir()
    sub = LabelSubscriber(demo.settings, node).start()
    demo.collectors.append(sub)
    argv = demo.py + [
        "edge_node.cli",
        "run",
        *demo.common,
        "--node-id",
        node,
        "--source",
        SCORE,
        "--fps",
        repr(a.swap_fps),
        "--deadline-ms",
        repr(a.deadline_ms),
    ]
    edge = demo.children.start("edge-swap", argv, out / "edge.log", demo.env)
    sub.wait(a.swap_at, idle_timeout=120.0, timeout=600.0)
    tmp = link.with_name(".pack-swap")
    tmp.symlink_to(new.root.resolve())
    os.replace(tmp, link)  # atomic: a reader sees the old folder or the new one
    for proc in (demo.hub, edge):
        proc.send_signal(signal.SIGHUP)
    swapped_at = len(sub.frame_ids)
    sub.wait(n, idle_timeout=60.0, timeout=600.0)
    edge.wait(30)
    sub.stop()
    demo.collectors.remove(sub)
    rep = score(list(sub.labels), demo.truth, expected=range(n))
    own = [(m.frame_id, m.pack_version) for m in sub.labels if m.source == "edge"]
    old_ids = [f for f, v in own if v != new.version]
    new_ids = [f for f, v in own if v == new.version]
    versions = {v: sum(m.pack_version == v for m in sub.labels) for v in sorted({str(m.pack_version) for m in sub.labels})}
    return {
        "frames": n,
        "labels_when_swapped": swapped_at,
        "missing": rep.missing,
        "duplicates": rep.duplicates,
        "labels_by_version": versions,
        "edge_labels_last_old_frame": max(old_ids, default=None),
        "edge_labels_first_new_frame": min(new_ids, default=None),
        "fallbacks": rep.fallbacks,
    }
