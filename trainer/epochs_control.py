"""The longer-training control: does progressive beat static by more when experts train longer?

The reference pack's progressive experts beat static ones overall by less than the paper reports
(0.89 against 2.2-2.8 pt), at 5 epochs against the paper's 200. This trains chosen experts (the
busiest) progressive and static at several epoch counts, everything else as the pack's experts
step: the same M_I (fine-tuned here for these experts only, when the work folder lacks it), init,
teacher labels, samples, seeds, LR and warm-up, with W's schedule and the LR's stretched over the
longer fit as the recipe stretches them. It scores them as the pack's report does (test split,
fp16-rounded weights, on the target subsets and overall) and chooses nothing from the numbers.

  trainer epochs-control --recipe cpu --control-experts 0,2,0-1 --control-epochs 5,20 \\
      --control-out docs/results/fashion-mnist/epochs-control
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from askexpert.hardware import cpu_name
from askexpert.pack import Pack
from askexpert.routing import decide, expert_key, required_experts, routed_logits
from trainer import workfiles as files
from trainer.context import RunContext, as_fp16
from trainer.pipeline import run_until
from trainer.report import acc, system_acc
from trainer.results import Stats
from trainer.steps.s6_subset_teachers import subset_teacher
from trainer.steps.s7_experts import train_kinds

KINDS = ("progressive", "static")


def add_arguments(p) -> None:
    """The control's own flags, beside the recipe's (`trainer.cli._common`)."""
    p.add_argument("--control-experts", required=True, help="expert keys, comma-separated (e.g. the busiest: 0,2,0-1)")
    p.add_argument("--control-epochs", default="5,20", help="epoch counts, comma-separated (default 5,20: the recipe's and 4x)")
    p.add_argument("--control-seeds", default="0", help="seeds, comma-separated (the pack's experts step's seeds are 0,1,2)")
    p.add_argument("--control-out", default="", help="folder for results.json (default: the work folder)")
    p.add_argument(
        "--control-pack", default="", help="a pack of the same recipe: also the system at its tau with these experts in place of its own"
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def run(ns, cfg, log) -> int:
    ctx = RunContext.open(cfg, log=log)
    experts = [k for k in ns.control_experts.split(",") if k]
    record = control(ctx, experts, _ints(ns.control_epochs), _ints(ns.control_seeds), ns.control_pack)
    out = Path(ns.control_out) if ns.control_out else ctx.work
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(record))
    print(to_markdown(record))
    log(f"epochs control written to {out / 'results.json'} and results.md")
    return 0


def control(ctx: RunContext, experts: list[str], epochs: list[int], seeds: list[int], pack: str = "") -> dict:
    """Train what is missing (seed by seed, so an early stop leaves whole seeds), then score."""
    run_until(ctx, "teacher")
    run_until(ctx, "partition")
    keys, subsets = ctx.experts_of()
    unknown = sorted(set(experts) - set(keys))
    if unknown or not experts or not epochs or not seeds:
        raise SystemExit(f"epochs control: experts must be some of {keys} (unknown: {unknown}), with epochs and seeds")
    sub_of = dict(zip(keys, subsets))
    idx = ctx.expert_samples()
    x, y = ctx.data.x_train[idx], ctx.data.y_train[idx]
    fits = ctx.info("epochs-control-fits") or {}
    t0 = time.time()
    for key in experts:
        subset_teacher(ctx, key, sub_of[key])
    for s in seeds:
        for e in epochs:
            for key in experts:
                if (fit := train_kinds(ctx, key, sub_of[key], s, KINDS, e, x, y)) is not None:
                    fits[f"{key}/epochs{e}/seed{s}"] = fit
                    ctx.set_info("epochs-control-fits", fits)
    ctx.log(f"[epochs control] trained in {time.time() - t0:.0f} s")
    return score(ctx, experts, sub_of, epochs, seeds, pack) | {"fits": fits}


def score(ctx: RunContext, experts: list[str], sub_of: dict, epochs: list[int], seeds: list[int], pack: str = "") -> dict:
    """Per epoch count: every expert's kinds over seeds, their mean over experts (per seed, then
    mean and std over seeds, as the report's Table 3), and progressive minus static; with `pack`,
    the system with the progressive ones (`system_with`)."""
    cfg, d = ctx.cfg, ctx.data
    y = d.y_test.numpy()
    part_of = np.asarray(ctx.need("partition")["partition"])
    masks = {key: np.isin(part_of[y], sub_of[key]) for key in experts}
    # [epochs][kind][key][seed] -> (target, overall)
    pts: dict = {}
    progressive: dict[tuple[int, str, int], np.ndarray] = {}
    for e in epochs:
        for kind in KINDS:
            for key in experts:
                for s in seeds:
                    rel = files.expert(kind, key, s, None if e == cfg.epochs_expert else e)
                    logits = ctx.logits(as_fp16(ctx.load_vit(cfg.expert_shape, rel)), d.x_test).numpy()
                    pts.setdefault(e, {}).setdefault(kind, {}).setdefault(key, []).append((acc(logits, y, masks[key]), acc(logits, y)))
                    if kind == "progressive":
                        progressive[(e, key, s)] = logits

    def over_experts(e: int, kind: str, where: int) -> list[float]:
        return [float(np.mean([pts[e][kind][k][i][where] for k in experts])) for i in range(len(seeds))]

    per_expert, mean, gap = {}, {}, {}
    for e in epochs:
        per_expert[str(e)] = {
            key: {
                kind: {w: Stats.of([p[i] for p in pts[e][kind][key]]).model_dump() for i, w in enumerate(("target", "overall"))}
                for kind in KINDS
            }
            for key in experts
        }
        mean[str(e)] = {
            kind: {w: Stats.of(over_experts(e, kind, i)).model_dump() for i, w in enumerate(("target", "overall"))} for kind in KINDS
        }
        gap[str(e)] = {
            w: Stats.of(list(np.subtract(over_experts(e, "progressive", i), over_experts(e, "static", i)))).model_dump()
            for i, w in enumerate(("target", "overall"))
        }
    system = (
        {str(e): system_with(pack, cfg.edge_shape, y, {k: [progressive[(e, k, s)] for s in seeds] for k in experts}) for e in epochs}
        if pack
        else None
    )
    return {
        "system_at_pack_tau": system,
        "experts": experts,
        "epochs": epochs,
        "seeds": seeds,
        "split": "test",
        "recipe_epochs_expert": cfg.epochs_expert,
        "recipe": {k: v for k, v in ctx.recipe().items() if k not in ("work", "out")},
        "machine": f"{cpu_name()}, {cfg.threads} threads",
        "per_expert": per_expert,
        "mean_over_experts": mean,
        "gap_progressive_minus_static": gap,
    }


def system_with(pack_dir: str, edge_shape: str, y: np.ndarray, replaced: dict[str, list[np.ndarray]]) -> dict:
    """Algorithm 1 at the pack's tau on the test split from the pack's stored logits (its edge model
    routes, its whole progressive experts answer), once as stored and once per seed with the
    `replaced` experts' logits in place of the pack's: what these experts alone would change."""
    pack = Pack.load(pack_dir)
    m = pack.manifest
    with np.load(pack.root / files.PACK_TEST_LOGITS, allow_pickle=False) as z:
        if not np.array_equal(z["labels"], y):
            raise SystemExit(f"{pack_dir}: its stored test labels are not this run's test split")
        edge = z[f"generalist-{edge_shape}"].astype(np.float32)
        own = {key: z[f"progressive-{key}"].astype(np.float32) for key in (expert_key(c) for c in required_experts(m.n_subsets, m.k))}
    d = decide(edge, m.partition, m.k)
    off = d.offloaded(m.tau)

    def system(experts: dict[str, np.ndarray]) -> float:
        return system_acc(d.edge_label, off, routed_logits(d, experts), y)

    n = len(next(iter(replaced.values())))
    return {
        "tau": m.tau,
        "alpha_pct": round(100.0 * float(off.mean()), 2),
        "offloaded_to_these_pct": round(100.0 * float((off & np.isin(d.expert, list(replaced))).mean()), 2),
        "pack_experts": system(own),
        "these_experts": Stats.of([system(own | {k: v[i] for k, v in replaced.items()}) for i in range(n)]).model_dump(),
    }


def to_markdown(record: dict) -> str:
    """The record's tables: per epoch count, the kinds' mean over the experts and the gap, then
    every expert's own numbers (mean ± std over seeds, test split)."""

    def pm(st: dict) -> str:
        return f"{st['mean']:.2f} ± {st['std']:.2f}"

    n = len(record["seeds"])
    lines = [
        f"Experts {', '.join(record['experts'])}; seeds {', '.join(map(str, record['seeds']))} (mean ± std over seeds); "
        f"test split; {record['machine']}.",
        "",
        "| epochs | progressive target | static target | gap target | progressive overall | static overall | gap overall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in map(str, record["epochs"]):
        m, g = record["mean_over_experts"][e], record["gap_progressive_minus_static"][e]
        lines.append(
            f"| {e} | {pm(m['progressive']['target'])} | {pm(m['static']['target'])} | {pm(g['target'])} "
            f"| {pm(m['progressive']['overall'])} | {pm(m['static']['overall'])} | {pm(g['overall'])} |"
        )
    if sys_ := record.get("system_at_pack_tau"):
        first = sys_[str(record["epochs"][0])]
        lines += [
            "",
            f"The system at the pack's tau {first['tau']} (test split, alpha {first['alpha_pct']}%, {first['offloaded_to_these_pct']}% of "
            f"the frames offloaded to these experts), the pack's own experts answering: {first['pack_experts']:.2f}%. "
            "With these experts (progressive) in place of the pack's, the rest the pack's:",
            "",
            "| epochs | system top-1 |",
            "| --- | --- |",
            *(f"| {e} | {pm(sys_[str(e)]['these_experts'])} |" for e in record["epochs"]),
        ]
    lines += [
        "",
        f"Per expert ({n} seed{'s' if n > 1 else ''}):",
        "",
        "| expert | epochs | progressive target | static target | progressive overall | static overall |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for key in record["experts"]:
        for e in map(str, record["epochs"]):
            r = record["per_expert"][e][key]
            lines.append(
                f"| {key} | {e} | {pm(r['progressive']['target'])} | {pm(r['static']['target'])} "
                f"| {pm(r['progressive']['overall'])} | {pm(r['static']['overall'])} |"
            )
    return "\n".join(lines) + "\n"
