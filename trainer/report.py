"""Evaluation of a trained pack on the test split, and the paper's claims checked against controls.

Tables: generalists' top-k and recall gaps (Tables 2 and 5), experts per kind (progressive, static,
uniform, compact) on their target subsets and overall (Table 3, mean and std over seeds), and the
whole system (Algorithm 1 from logits) for a range of tau with the controls that say *why* it is as
accurate as it is: the 4H/6H generalist co-inference at the same offloads (Figure 4), routed
uniform experts (training without specialisation), and one fixed expert for every offloaded frame
(no routing). The default tau is chosen on the validation split, never on the test split.
The results are typed (`trainer.results`); `trainer.claims` turns them into verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from askexpert.hardware import cpu_name
from askexpert.models import ViTArch, build_vit
from askexpert.pack import ServedForm
from askexpert.paper import PAPER_ALPHA_PCT, PAPER_TOPK
from askexpert.quality import expected_band
from askexpert.routing import Decision, decide, routed_logits
from trainer.claims import claims
from trainer.results import (
    KINDS,
    AlphaRow,
    DomainGroup,
    ExpertRow,
    ExpertTable,
    FixedExpert,
    Generalist,
    OffloadDomains,
    PackReport,
    Point,
    Scores,
    Stats,
    SystemRow,
    Table3,
    TauChoice,
)

TAUS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99]
FORM_LOGITS = {"full": "progressive", "compact": "compact"}  # the logits' name of each expert form a hub serves
FORM_TIE_PT = 0.1  # 6 of the reference pack's 6000 validation frames
FORM_RULE = f"higher Algorithm 1 top-1 on the validation split at tau; within {FORM_TIE_PT} pt, the lower time per frame of one expert"


@dataclass
class Evaluation:
    """What the report step measured: `test` logits of generalists, teachers, compact experts and
    seed 0's experts; `seeds`, every seed's expert logits ({kind-key: (N, C)}); `val`, validation
    logits of the edge model, the baselines and seed 0's progressive experts."""

    test: dict[str, np.ndarray]
    y: np.ndarray
    seeds: list[dict[str, np.ndarray]]
    val: dict[str, np.ndarray]
    y_val: np.ndarray
    per_frame_ms: dict[str, float] = field(default_factory=dict)  # one expert of each form ({} without compact experts)


def topk_acc(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return round(100.0 * float((top == y[:, None]).any(axis=1).mean()), 2)


def acc(logits: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    ok = logits.argmax(1) == y
    if mask is not None:
        ok = ok[mask]
    return round(100.0 * float(ok.mean()), 2) if ok.size else float("nan")


def n_params(arch: ViTArch) -> int:
    return sum(p.numel() for p in build_vit(arch).parameters())


def system_acc(edge_label: np.ndarray, off: np.ndarray, routed: np.ndarray, y: np.ndarray) -> float:
    """Algorithm 1's accuracy (%) with `routed` logits for the offloaded frames."""
    return round(100.0 * float((np.where(off, routed.argmax(1), edge_label) == y).mean()), 2)


def choose_tau(edge: np.ndarray, experts: dict[str, np.ndarray], y: np.ndarray, partition, k: int, tolerance: float) -> TauChoice:
    """The lowest tau of TAUS whose system accuracy on the *validation* split is within `tolerance`
    points of the best: most of the experts' gain for the fewest offloads."""
    d = decide(edge, partition, k)
    routed = routed_logits(d, experts)
    accs = {t: system_acc(d.edge_label, d.offloaded(t), routed, y) for t in TAUS}
    best = max(accs.values())
    tau = min(t for t, a in accs.items() if a >= best - tolerance)
    return TauChoice(tau=tau, val_accuracy=accs, tolerance_pt=tolerance, val_alpha_pct=round(100 * float(d.offloaded(tau).mean()), 2))


def choose_form(
    edge: np.ndarray, routed: dict[str, np.ndarray], y: np.ndarray, partition, k: int, tau: float, per_frame_ms: dict[str, float]
) -> ServedForm:
    """The expert form hubs serve by default, by FORM_RULE. `edge`: the edge generalist's
    *validation* logits; `routed`: per form, each frame's routed expert's logits (read only where
    the frame is offloaded at tau); `y`: the validation labels."""
    d = decide(edge, partition, k)
    off = d.offloaded(tau)
    acc = {form: system_acc(d.edge_label, off, r, y) for form, r in routed.items()}
    close = [form for form in acc if acc[form] >= max(acc.values()) - FORM_TIE_PT]
    return ServedForm(
        form=min(close, key=per_frame_ms.__getitem__),
        tau=tau,
        val_items=len(y),
        val_system_top1=acc,
        per_frame_ms=per_frame_ms,
        measured_on=cpu_name(),
        rule=FORM_RULE,
    )


def served_form(ev: Evaluation, edge: str, keys: list[str], partition, k: int, tau: float) -> ServedForm | None:
    """The choice of `choose_form` for a run with both forms (None without compact experts)."""
    if not ev.per_frame_ms:
        return None
    d = decide(ev.val[edge], partition, k)
    routed = {form: routed_logits(d, {key: ev.val[f"{kind}-{key}"] for key in keys}) for form, kind in FORM_LOGITS.items()}
    return choose_form(ev.val[edge], routed, ev.y_val, partition, k, tau, ev.per_frame_ms)


def generalists(ctx, ev: Evaluation) -> dict[str, Generalist]:
    """Every generalist, baseline and teacher of the run with its shape and top-k (Tables 2 and 5)."""
    out = {}
    for name, lg in ev.test.items():
        if name.startswith(("generalist-", "baseline-", "teacher-")):
            shape = name.split("-", 1)[1]
            arch = ctx.arch(shape)
            top = {f"top{k}": topk_acc(lg, ev.y, k) for k in (1, 2, 3)}
            out[name] = Generalist(
                shape=shape,
                depth=arch.depth,
                embed_dim=arch.embed_dim,
                heads=arch.num_heads,
                mlp=int(arch.embed_dim * arch.mlp_ratio),
                params=n_params(arch),
                **top,
                gap_2_1=round(top["top2"] - top["top1"], 2),
                gap_3_1=round(top["top3"] - top["top1"], 2),
            )
    return out


def expert_rows(ev: Evaluation, masks: dict[str, np.ndarray], generalist: str) -> dict[str, ExpertRow]:
    """Per expert, every kind over seeds on its target subsets (`masks`) and overall; its compact
    form and its M_I where the run has them; the expert-shaped `generalist` on the same frames."""
    rows = {}
    for key, m in masks.items():
        scores = {
            kind: Scores(
                target=Stats.of([acc(s[f"{kind}-{key}"], ev.y, m) for s in ev.seeds]),
                overall=Stats.of([acc(s[f"{kind}-{key}"], ev.y) for s in ev.seeds]),
            )
            for kind in KINDS
        }
        single = {
            kind: Point(target=acc(ev.test[name], ev.y, m), overall=acc(ev.test[name], ev.y))
            for kind, name in (("compact", f"compact-{key}"), ("teacher", f"subset-teacher-{key}"))
            if name in ev.test
        }
        rows[key] = ExpertRow(target_n=int(m.sum()), generalist_target=acc(ev.test[generalist], ev.y, m), **scores, **single)
    return rows


def expert_table(experts: dict[str, ExpertRow], over: list[str], n_seeds: int) -> ExpertTable:
    """Table 3 over the experts `over`: the mean over them per seed, then mean and std over seeds."""

    def mean_over(kind: str, where: str) -> Stats:
        return Stats.of([float(np.mean([getattr(experts[k].kind(kind), where).values[s] for k in over])) for s in range(n_seeds)])

    kinds = {kind: Scores(target=mean_over(kind, "target"), overall=mean_over(kind, "overall")) for kind in KINDS}
    g_target = round(float(np.mean([experts[k].generalist_target for k in over])), 2)
    return ExpertTable(experts=over, generalist_target=g_target, **kinds)


def table3(cfg, experts: dict[str, ExpertRow], per_expert: dict[str, list[int]], n_seeds: int, generalist_overall: float) -> Table3:
    """Over every expert (those trained with one seed repeat it), and over the experts trained with
    every seed (the busiest), which is what the claims' spread over seeds rests on."""
    keys = list(experts)
    varied = [k for k in keys if len(per_expert[k]) == n_seeds]
    compact = {}
    if all(experts[k].compact is not None for k in keys):
        mean = {w: round(float(np.mean([getattr(experts[k].compact, w) for k in keys])), 2) for w in ("target", "overall")}
        compact["compact"] = Point(**mean)
    everything = expert_table(experts, keys, n_seeds)
    return Table3(
        model=cfg.expert_shape,
        S=cfg.subsets,
        k=cfg.k,
        n_experts=len(keys),
        seeds=n_seeds,
        generalist_overall=generalist_overall,
        **everything.model_dump(exclude_unset=True),
        multi_seed=expert_table(experts, varied, n_seeds),
        **compact,
    )


def routed_families(d: Decision, ev: Evaluation, keys: list[str]) -> dict[str, list[np.ndarray]]:
    """Per expert family, the routed expert's logits for every frame, one array per seed."""
    routed = {kind: [routed_logits(d, {k: s[f"{kind}-{k}"] for k in keys}) for s in ev.seeds] for kind in KINDS}
    if all(f"compact-{k}" in ev.test for k in keys):
        routed["compact"] = [routed_logits(d, {k: ev.test[f"compact-{k}"] for k in keys})]
    return routed


def system_row(d: Decision, tau: float, routed: dict[str, list[np.ndarray]], ev: Evaluation, edge: str, keys: list[str]) -> SystemRow:
    """Algorithm 1 at `tau` with each routed family, each baseline in the experts' place, and the
    best fixed expert; then the same offloaded frames alone (Figure 4)."""
    off, y = d.offloaded(tau), ev.y
    baselines = [n for n in ev.test if n.startswith("baseline-")]
    families = {kind: Stats.of([system_acc(d.edge_label, off, r, y) for r in rs]) for kind, rs in routed.items()}
    coinference = {f"coinference_{b.split('-', 1)[1]}": system_acc(d.edge_label, off, ev.test[b], y) for b in baselines}
    offloaded = {"progressive": Stats.of([acc(r, y, off) for r in routed["progressive"]])} | {
        b.split("-", 1)[1]: acc(ev.test[b], y, off) for b in baselines
    }
    fixed = {k: Stats.of([system_acc(d.edge_label, off, s[f"progressive-{k}"], y) for s in ev.seeds]).mean for k in keys}
    best = max(fixed, key=fixed.get)
    return SystemRow(
        tau=tau,
        alpha_pct=round(100.0 * float(off.mean()), 2),
        edge_only=acc(ev.test[edge], y),
        **families,
        **coinference,
        offloaded=offloaded,
        fixed_expert=FixedExpert(best_key=best, accuracy=fixed[best]),
    )


def offload_domains(
    d: Decision, routed: list[np.ndarray], generalist: np.ndarray, y: np.ndarray, subset_of: np.ndarray, tau: float
) -> OffloadDomains:
    """Where the experts win or lose: the offloaded frames at tau split by whether the frame's true
    class lies in the routed expert's subsets (its domain D_I) or not; per group, the frame count
    and the routed progressive expert's accuracy against the expert-shaped generalist's on the
    same frames (mean over seeds)."""
    off = d.offloaded(tau)
    inside = np.array([str(subset_of[i]) in key.split("-") for i, key in enumerate(d.expert)])
    groups = {}
    for name, group in (("in_domain", off & inside), ("out_of_domain", off & ~inside)):
        exp = Stats.of([acc(r, y, group) for r in routed])
        gen = acc(generalist, y, group)
        groups[name] = DomainGroup(
            n=int(group.sum()), expert=exp, generalist=gen, diff_pt=round(exp.mean - gen, 2) if group.any() else None
        )
    return OffloadDomains(**groups, tau=tau)


def build_report(ctx, ev: Evaluation) -> PackReport:
    """The whole report of a run (`trainer.context.RunContext`) whose earlier steps are done."""
    cfg = ctx.cfg
    pinfo, einfo = ctx.need("partition"), ctx.need("experts")
    partition, keys = pinfo["partition"], einfo["keys"]
    subset_of = np.array(partition)[ev.y]
    edge, gen_name = f"generalist-{cfg.edge_shape}", f"baseline-{cfg.expert_shape}"
    gens = generalists(ctx, ev)
    masks = {key: np.isin(subset_of, [int(s) for s in key.split("-")]) for key in keys}
    experts = expert_rows(ev, masks, gen_name)
    per_expert = einfo.get("seeds_per_expert") or {k: list(range(len(ev.seeds))) for k in keys}
    t3 = table3(cfg, experts, per_expert, len(ev.seeds), gens[gen_name].top1)
    val_experts = {k: ev.val[f"progressive-{k}"] for k in keys}
    tau_choice = choose_tau(ev.val[edge], val_experts, ev.y_val, partition, cfg.k, cfg.tau_tolerance)
    tau = cfg.tau if cfg.tau is not None else tau_choice.tau
    served = served_form(ev, edge, keys, partition, cfg.k, tau)
    served_kind = FORM_LOGITS[served.form] if served else "progressive"
    val_routed = routed_logits(decide(ev.val[edge], partition, cfg.k), {k: ev.val[f"{served_kind}-{k}"] for k in keys})
    quality = expected_band(ev.val[edge], val_routed.argmax(1), partition, cfg.k, tau)
    d = decide(ev.test[edge], partition, cfg.k)
    routed = routed_families(d, ev, keys)
    sweep = [system_row(d, tau, routed, ev, edge, keys) for tau in TAUS]
    at = next(r for r in sweep if r.tau == tau_choice.tau)
    at_09 = next(r for r in sweep if r.tau == 0.9)
    teacher = f"baseline-{cfg.teacher_shape}" if f"baseline-{cfg.teacher_shape}" in gens else f"teacher-{cfg.teacher_shape}"
    recall = {
        "3H": {f"top{k}": topk_acc(ev.test[edge], ev.y, k) for k in (1, 2, 3)},
        "paper_cifar100": dict(zip(("top1", "top2", "top3"), PAPER_TOPK["CIFAR-100"])),
    }
    return PackReport(
        dataset=cfg.dataset,
        split="test",
        n_test=int(len(ev.y)),
        partition=partition,
        subset_names=pinfo["subset_names"],
        partition_how=pinfo["how"],
        val_topk_within_one_subset=pinfo.get("val_topk_within_one_subset"),
        generalists=gens,
        teacher=teacher,
        experts=experts,
        table3=t3,
        system_sweep=sweep,
        default_tau=tau_choice,
        at_default_tau=at,
        alpha=[AlphaRow(tau=t, ours_pct=round(100.0 * float(d.offloaded(t).mean()), 2), paper_pct=PAPER_ALPHA_PCT.get(t)) for t in TAUS],
        recall=recall,
        claims=claims(cfg, t3, (at, at_09), gens, experts),
        offload_domains=offload_domains(d, routed["progressive"], ev.test[gen_name], ev.y, subset_of, 0.9),
        premise=ctx.info("premise") or None,
        subset_teachers=(ctx.info("subset-teachers") or {}).get("models"),
        expert_training=expert_training(cfg, einfo, len(ev.seeds), per_expert),
        quality=quality,
        served_form=served,
    )


def expert_training(cfg, einfo: dict, n_seeds: int, per_expert: dict[str, list[int]]) -> dict:
    """How the experts were trained, from the experts step's record."""
    return {
        "samples": einfo["samples"],
        "teacher_recipe": einfo["teacher_recipe"],
        "init": einfo["init"],
        "seeds": n_seeds,
        "seeds_per_expert": per_expert,
        "W": cfg.max_weight,
        "omega_schedule": cfg.omega_schedule,
        "epochs": cfg.epochs_expert,
        "compact": einfo.get("compact"),
    }
