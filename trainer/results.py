"""The pack report's typed results: what `trainer.report` computes, the Markdown and the pack's
manifest read by attribute, and JSON is written (and read back) in one place, `PackReport.to_json`.

Optional parts (compact experts, subset teachers, the premise sweep) are left out of the JSON when
a run has none, as they are unset here.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from askexpert.pack import ServedForm
from askexpert.quality import QualityBand

KINDS = ("progressive", "static", "uniform")  # the method and its two controls


class Stats(BaseModel):
    """Mean and sample std (0 for one value) of per-seed numbers, plus the values."""

    mean: float
    std: float
    values: list[float]

    @classmethod
    def of(cls, vals: list[float]) -> Stats:
        a = np.asarray(vals, dtype=np.float64)
        std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
        return cls(mean=round(float(a.mean()), 2), std=round(std, 2), values=[round(float(v), 2) for v in a])


class Generalist(BaseModel):
    """A generalist's shape and test accuracy (Tables 2 and 5)."""

    shape: str
    depth: int
    embed_dim: int
    heads: int
    mlp: int
    params: int
    top1: float
    top2: float
    top3: float
    gap_2_1: float
    gap_3_1: float


class Scores(BaseModel):
    """One expert kind over seeds: on the expert's target subsets and on the whole test split."""

    target: Stats
    overall: Stats


class Point(BaseModel):
    """One model (no seeds): target and overall accuracy."""

    target: float
    overall: float


class ExpertRow(BaseModel):
    target_n: int
    generalist_target: float
    progressive: Scores
    static: Scores
    uniform: Scores
    compact: Point | None = None
    teacher: Point | None = None  # the expert's own M_I

    def kind(self, name: str) -> Scores:
        return getattr(self, name)


class ExpertTable(BaseModel):
    """Table 3 over a set of experts: per seed the mean over experts, then mean and std over seeds."""

    experts: list[str]
    generalist_target: float
    progressive: Scores
    static: Scores
    uniform: Scores

    def kind(self, name: str) -> Scores:
        return getattr(self, name)


class Table3(BaseModel):
    model: str
    S: int
    k: int
    n_experts: int
    seeds: int
    generalist_overall: float
    experts: list[str]
    generalist_target: float
    progressive: Scores
    static: Scores
    uniform: Scores
    multi_seed: ExpertTable  # over the experts trained with every seed (the claims' spread rests on them)
    compact: Point | None = None

    def kind(self, name: str) -> Scores:
        return getattr(self, name)


class FixedExpert(BaseModel):
    best_key: str
    accuracy: float


class SystemRow(BaseModel):
    """Algorithm 1 at one tau: routed expert families (progressive, static, uniform, compact) as
    system accuracy, `coinference_<shape>` for each baseline generalist in the experts' place,
    Figure 4 on the offloaded frames alone, and the best single fixed expert."""

    model_config = ConfigDict(extra="allow")  # coinference_<shape>: one per baseline of the run

    tau: float
    alpha_pct: float
    edge_only: float
    progressive: Stats
    static: Stats
    uniform: Stats
    compact: Stats | None = None
    offloaded: dict[str, Stats | float]
    fixed_expert: FixedExpert

    @property
    def coinference(self) -> dict[str, float]:
        """Baseline shape -> system accuracy with that generalist answering the offloads."""
        return {k.split("_", 1)[1]: v for k, v in (self.model_extra or {}).items() if k.startswith("coinference_")}


class TauChoice(BaseModel):
    tau: float
    val_accuracy: dict[float, float]
    tolerance_pt: float
    val_alpha_pct: float


class AlphaRow(BaseModel):
    tau: float
    ours_pct: float
    paper_pct: float | None


class Claim(BaseModel):
    claim: str
    paper: str
    ours: Stats
    target_pt: float
    verdict: str
    note: str = ""


class DomainGroup(BaseModel):
    n: int
    expert: Stats
    generalist: float
    diff_pt: float | None


class OffloadDomains(BaseModel):
    """Offloads at tau split by whether the true class lies in the routed expert's subsets."""

    in_domain: DomainGroup
    out_of_domain: DomainGroup
    tau: float


class PackReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    dataset: str
    split: str
    n_test: int
    partition: list[int]
    subset_names: list[str]
    partition_how: str
    val_topk_within_one_subset: float | None
    generalists: dict[str, Generalist]
    teacher: str
    experts: dict[str, ExpertRow]
    table3: Table3
    system_sweep: list[SystemRow]
    default_tau: TauChoice
    at_default_tau: SystemRow
    alpha: list[AlphaRow]
    recall: dict[str, dict[str, float]]
    claims: list[Claim]
    offload_domains: OffloadDomains = Field(alias="offload_domains_tau_0.9")
    premise: dict | None  # the premise sweep's record (step premise)
    subset_teachers: dict | None  # the subset teachers' records (step subset-teachers)
    expert_training: dict
    quality: QualityBand | None = None  # the label-free signals expected at the pack's tau, on validation
    served_form: ServedForm | None = None  # the expert form hubs serve by default, chosen on validation

    def to_json(self) -> dict:
        """The report as JSON data: unset optional parts left out, field names as written."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)
