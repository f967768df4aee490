"""The scorer: collect final labels from MQTT, join them with the truth, report.

    score(labels, truth, ...)        pure: a list of LabelMsg + truth -> RunScore (no broker)
    run_score(...)                   collect until N frames or idle, then score and write the report
(reports and plots: evaluation.report)

Alpha counts every frame the edge offloaded (source `expert` or `edge-fallback`). Latency is the
label's own `latency_ms` (capture -> final label, measured at the edge). Frames per second is
frames labelled / (last label time - first capture time), label time = t_capture + latency.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from askexpert.cli_common import load_settings
from askexpert.log import get_logger
from askexpert.protocol import LABEL_SOURCES, LATENCY_PARTS, LabelMsg
from askexpert.settings import CommonSettings, add_settings_arguments
from askexpert.sources_spec import parse_source
from askexpert.subscriber import LabelSubscriber
from evaluation import report
from evaluation.report import PCTS
from evaluation.results import ClassScore, ExpertLoad, OfflineCheck, RunScore, SourceScore

log = get_logger("evaluation.score")


# ---------------------------------------------------------------------------------------- pure scoring
def latency_stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"n": 0}
    out = {"n": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    out.update({f"p{p}": float(np.percentile(v, p)) for p in PCTS})
    return out


def _truth_of(truth: Mapping[int, int] | Sequence[int] | np.ndarray | None, fid: int) -> int | None:
    if truth is None:
        return None
    if isinstance(truth, Mapping):
        t = truth.get(fid)
        return None if t is None or t < 0 else int(t)
    if 0 <= fid < len(truth) and truth[fid] >= 0:
        return int(truth[fid])
    return None


def hub_counts(msgs: Iterable[LabelMsg]) -> dict[str, int]:
    """Expert labels per answering hub (LabelMsg.hub; "?" for labels from edges that do not name
    it): which hubs did the work, and which one to ask about a label that looks wrong."""
    return dict(sorted(Counter(m.hub or "?" for m in msgs if m.source == "expert").items()))


def _mean_ok(pairs: list[tuple[int, int]]) -> float | None:
    """The share of (label, truth) pairs that agree; None without pairs."""
    return float(np.mean([a == b for a, b in pairs])) if pairs else None


def score(
    labels: Sequence[LabelMsg],
    truth: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
    *,
    expected: Iterable[int] | None = None,
    classes: Sequence[str] | None = None,
    offline: Mapping[int, int] | None = None,
    wall_s: float | None = None,
    malformed: int = 0,
) -> RunScore:
    """Score a label stream. The first label of a frame counts; later ones are duplicates.

    truth: frame id -> true class (mapping, or a sequence indexed by frame id; < 0 = unknown).
    expected: the frame ids that should have been labelled (default: none checked).
    offline: frame id -> the offline Algorithm 1 label at the same tau (askexpert.routing.offline_labels), to
    check that the live system agrees; edge-fallback frames are left out of that comparison.
    """
    first: dict[int, LabelMsg] = {}
    for m in labels:
        first.setdefault(m.frame_id, m)
    msgs = list(first.values())
    n = len(msgs)
    scored = [(m, t) for m in msgs if (t := _truth_of(truth, m.frame_id)) is not None]
    offloaded = sum(m.source != "edge" for m in msgs)
    parts: dict = {}
    if expected is not None:
        exp = set(int(f) for f in expected)
        missing = sorted(exp - first.keys())
        parts |= dict(expected=len(exp), missing=len(missing), missing_ids=missing[:50], unexpected=len(first.keys() - exp))
    if n:
        t0 = min(m.t_capture for m in msgs)
        t1 = max(m.t_capture + m.latency_ms / 1000.0 for m in msgs)
        parts |= dict(span_s=t1 - t0, fps=n / (t1 - t0) if t1 > t0 else None)
    if wall_s:
        parts["wall_s"] = wall_s
    if classes is not None and scored:
        parts["per_class"] = {name: _class_score([m for m, t in scored if t == c], c) for c, name in enumerate(classes)}
    if offline is not None:
        parts["offline"] = _offline_check(msgs, offline)
    return RunScore(
        labels_received=len(labels),
        frames=n,
        duplicates=len(labels) - n,
        malformed=malformed,
        alpha=offloaded / n if n else None,
        fallbacks=sum(m.source == "edge-fallback" for m in msgs),
        nodes=sorted({m.node for m in msgs}),
        packs=sorted({m.pack for m in msgs}),
        by_hub=hub_counts(msgs),
        scored=len(scored),
        accuracy=_mean_ok([(m.label, t) for m, t in scored]),
        edge_only_accuracy=_mean_ok([(m.edge_label, t) for m, t in scored]),
        by_source=_by_source(msgs, scored),
        expert_load=_expert_load(msgs, scored),
        latency_ms=latency_stats([m.latency_ms for m in msgs]),
        **parts,
    )


def _by_source(msgs: list[LabelMsg], scored: list[tuple[LabelMsg, int]]) -> dict[str, SourceScore]:
    """Per label source: frames, share, accuracy (and the edge model's on the same frames), latency."""
    by_src = Counter(m.source for m in msgs)
    n = len(msgs)
    out = {}
    for src in list(LABEL_SOURCES) + sorted(set(by_src) - set(LABEL_SOURCES)):
        ms = [(m, t) for m, t in scored if m.source == src]
        mine = [m for m in msgs if m.source == src]
        out[src] = SourceScore(
            frames=by_src.get(src, 0),
            share=by_src.get(src, 0) / n if n else None,
            scored=len(ms),
            accuracy=_mean_ok([(m.label, t) for m, t in ms]),
            edge_accuracy=_mean_ok([(m.edge_label, t) for m, t in ms]),
            latency_ms=latency_stats([m.latency_ms for m in mine]),
            # where the time went, for labels that carry it (edges before the breakdown send none)
            latency_parts_ms={
                part: latency_stats(v) for part in LATENCY_PARTS if (v := [getattr(m, part) for m in mine if getattr(m, part) is not None])
            },
        )
    return out


def _expert_load(msgs: list[LabelMsg], scored: list[tuple[LabelMsg, int]]) -> dict[str, ExpertLoad]:
    """Per expert: offloads, answered or fallen back, and the answered frames' accuracy."""
    load: dict[str, ExpertLoad] = defaultdict(ExpertLoad)
    for m in msgs:
        if m.source != "edge":
            row = load[m.expert or "?"]
            row.offloaded += 1
            if m.source == "expert":
                row.answered += 1
            else:
                row.fallback += 1
    for m, t in scored:
        if m.source == "expert":
            load[m.expert or "?"].scored += 1
            load[m.expert or "?"].correct += int(m.label == t)
    for row in load.values():
        row.accuracy = row.correct / row.scored if row.scored else None
    return dict(sorted(load.items(), key=lambda kv: (len(kv[0]), kv[0])))


def _class_score(labels: list[LabelMsg], c: int) -> ClassScore:
    return ClassScore(n=len(labels), accuracy=float(np.mean([m.label == c for m in labels])) if labels else None)


def _offline_check(msgs: list[LabelMsg], offline: Mapping[int, int]) -> OfflineCheck:
    comp = [(m, offline[m.frame_id]) for m in msgs if m.source != "edge-fallback" and m.frame_id in offline]
    bad = [m.frame_id for m, o in comp if m.label != o]
    return OfflineCheck(compared=len(comp), agree=len(comp) - len(bad), mismatch_ids=bad[:50], equal=not bad and len(comp) > 0)


# ---------------------------------------------------------------------------------------- truth
def load_truth(spec: str) -> tuple[np.ndarray, list[str] | None]:
    """Truth labels by frame id from `replay:DIR`, a recording folder, or `dataset:NAME:SPLIT`."""
    src = parse_source(spec)
    if src.kind == "dataset":
        from askexpert.datasets import load_dataset

        data = load_dataset(src.name, src.split)
        return np.asarray(data.labels, dtype=np.int64), list(data.classes)
    from askexpert.recording import Recording

    rec = Recording(src.recording)
    s = rec.sidecar
    out = np.full(int(s.frames.max()) + 1 if len(s.frames) else 0, -1, dtype=np.int64)
    out[s.frames] = s.labels
    return out, rec.classes


def truth_frames(spec: str, frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame id, frame) of `dataset:NAME:SPLIT` or `replay:DIR`, exactly as the edge's source yields
    them (same pixels, same ids), for recomputing Algorithm 1 offline on the frames of a live run."""
    src = parse_source(spec)
    if src.kind == "dataset":
        from askexpert.datasets import load_dataset
        from askexpert.frames import dataset_frames

        yield from ((i, image) for i, image, _ in islice(dataset_frames(load_dataset(src.name, src.split)), frames))
        return
    from askexpert.recording import Recording

    yield from ((rf.index, rf.image) for rf in islice(Recording(src.recording).frames(), frames))


def run_score(
    settings,
    node: str,
    out_dir: str | Path,
    *,
    truth: str | None = None,
    frames: int | None = None,
    idle_timeout: float = 10.0,
    timeout: float | None = None,
    print_table: bool = True,
) -> RunScore:
    """`python -m evaluation score`: collect labels of `node` until `frames` frames or idle, then report.

    truth: `replay:DIR`, a recording folder or `dataset:NAME:SPLIT` (frame id = index), or None.
    With frames given, frame ids 0..frames-1 are expected (missing ones are counted)."""
    truth_arr, classes = load_truth(truth) if truth else (None, None)
    col = LabelSubscriber(settings, node).start()
    t0 = time.monotonic()
    try:
        why = col.wait(frames, idle_timeout, timeout)
    finally:
        col.stop()
    rep = score(
        col.labels,
        truth_arr,
        expected=range(frames) if frames else None,
        classes=classes,
        malformed=col.malformed,
        wall_s=time.monotonic() - t0,
    )
    rep.stopped, rep.truth = why, truth
    report.write_report(rep, out_dir, col.labels, title=f"Live run of node {node}")
    if print_table:
        report.print_report(rep, title=f"Live run of node {node}")
    return rep


# ---------------------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    """`score --node-id N --truth SPEC --out DIR [--frames N] [--broker URL] ...`."""
    p = sub.add_parser("score", help="collect a node's final labels, join with the truth, write a report")
    add_settings_arguments(p, CommonSettings)
    p.add_argument("--node-id", required=True, help="the edge node whose labels to score")
    p.add_argument("--truth", default=None, help="replay:DIR, a recording folder, or dataset:NAME:SPLIT (frame id = index)")
    p.add_argument("--out", default=None, help="report folder (default runs/score-<node>-<time>)")
    p.add_argument("--frames", type=int, default=None, help="stop after this many distinct frames (ids 0..N-1 expected)")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="stop when no label came for this long (s)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this long in any case (s)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Score one node's live labels and write the report."""
    s = load_settings(CommonSettings, args)
    out = args.out or f"runs/score-{args.node_id}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    rep = run_score(s, args.node_id, out, truth=args.truth, frames=args.frames, idle_timeout=args.idle_timeout, timeout=args.timeout)
    print(f"report: {out}/report.md")
    return 0 if rep.frames else 1
