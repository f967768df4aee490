"""A scored run, typed: what `evaluation.score` computes and the demo adds, read by attribute by the
reports, `compare` and the benches; JSON is written (and read back) in one place, `RunScore.to_json`.

Parts a run does not have (expected frames, per-class accuracy, the offline check, the demo's run
metadata) stay unset and are left out of the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

Latency = dict[str, float]  # n, mean, min, max and the percentiles of evaluation.report.PCTS (p50 ...), in ms


class SourceScore(BaseModel):
    """The frames whose final label came from one source (edge, expert, edge-fallback)."""

    frames: int
    share: float | None  # None in a run without frames
    scored: int
    accuracy: float | None
    edge_accuracy: float | None
    latency_ms: Latency
    latency_parts_ms: dict[str, Latency] = {}  # where the time went, for labels that carry it


class ExpertLoad(BaseModel):
    offloaded: int = 0
    answered: int = 0
    fallback: int = 0
    correct: int = 0
    scored: int = 0
    accuracy: float | None = None


class ClassScore(BaseModel):
    n: int
    accuracy: float | None


class OfflineCheck(BaseModel):
    """The live labels against Algorithm 1 recomputed offline on the same frames (fallbacks left out)."""

    compared: int
    agree: int
    mismatch_ids: list[int]
    equal: bool


class RunScore(BaseModel):
    labels_received: int
    frames: int
    duplicates: int
    malformed: int = 0
    expected: int | None = None
    missing: int | None = None
    missing_ids: list[int] | None = None
    unexpected: int | None = None
    alpha: float | None  # None in a run without frames
    fallbacks: int
    nodes: list[str]
    packs: list[str]
    by_hub: dict[str, int] = {}  # expert labels per answering hub (LabelMsg.hub; "?": not named)
    scored: int
    accuracy: float | None
    edge_only_accuracy: float | None
    by_source: dict[str, SourceScore]
    expert_load: dict[str, ExpertLoad]
    latency_ms: Latency
    span_s: float | None = None
    fps: float | None = None
    wall_s: float | None = None
    per_class: dict[str, ClassScore] | None = None
    offline: OfflineCheck | None = None
    # how the run was made (score: stopped, truth; the demo: the rest)
    stopped: str | None = None
    truth: str | None = None
    tau: float | None = None
    pack: str | None = None
    pack_id: str | None = None
    source: str | None = None
    edge: dict | None = None  # the edge node's own summary (edge-node --summary-json)
    offline_accuracy: float | None = None
    offline_check: str | None = None  # exact | stored
    expert_form: str | None = None  # the experts the hub served: full | compact (the demo's hub: the pack's choice)
    replay_s: float | None = None
    date: str | None = None
    machine: str | None = None
    demo_wall_s: float | None = None  # the whole demo up to this report, startup included

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)

    def save(self, folder: str | Path) -> Path:
        """report.json in `folder`."""
        path = Path(folder) / "report.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunScore:
        """A report.json, or the one in a run folder."""
        p = Path(path)
        return cls.model_validate_json((p / "report.json" if p.is_dir() else p).read_text())
