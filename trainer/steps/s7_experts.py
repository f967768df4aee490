"""Step 7, experts: whole experts m_I (every block trainable, pruned from M_I) with the progressive
schedule (eq. 1-3) and its two controls on the same init, data, teacher labels, epochs and LR
schedule: static (constant W) and uniform (weight 1), for each of the expert's seeds (data order and
augmentation). Plus, optionally, compact experts: tails on the frozen 4H generalist trunk."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from safetensors.torch import load_file

from askexpert.models import ExpertTail
from askexpert.routing import decide
from trainer import workfiles as files
from trainer.context import RunContext, as_fp16
from trainer.engine import Job, predict
from trainer.prune import compute_importance, prune_vit

EXPERT_KINDS = ("progressive", "static", "uniform")  # the method and its two controls


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("experts")) is not None:
        return done
    cfg, d = ctx.cfg, ctx.data
    ctx.need("prune")
    ctx.need("subset-teachers")
    keys, subsets = ctx.experts_of()
    idx = ctx.expert_samples()
    x, y = d.x_train[idx], d.y_train[idx]
    fits = ctx.info("expert-fits") or {}
    share = offload_share(ctx)
    seeds = expert_seeds(ctx, share)
    info: dict = {
        "keys": keys,
        "samples": len(idx),
        "teacher_recipe": cfg.teacher_recipe,
        "kinds": list(EXPERT_KINDS),
        "seeds": list(range(max(len(v) for v in seeds.values()))),
        "seeds_per_expert": seeds,
        "val_offload_share_pct_tau_0.9": share,
        "init": (f"M_I pruned to {cfg.expert_shape}" if cfg.expert_init == "pruned-teacher" else f"the {cfg.expert_shape} generalist"),
        "init_val_top1": {},
    }
    for key, sub in zip(keys, subsets):
        info["init_val_top1"][key] = ctx.acc(ctx.logits(expert_init(ctx, key), d.x_val), d.y_val)
        for s in seeds[key]:
            if (fit := train_kinds(ctx, key, sub, s, EXPERT_KINDS, cfg.epochs_expert, x, y)) is not None:
                fits[f"{key}/seed{s}"] = fit
                ctx.set_info("expert-fits", fits)
    info["fits"] = fits
    info["wall_s"] = round(sum(f["wall_s"] for f in fits.values()), 1)
    if cfg.compact_experts:
        info["compact"] = _compact_experts(ctx, keys, subsets, x, y)
    ctx.set_info("experts", info)
    return info


def train_kinds(ctx: RunContext, key: str, sub, seed: int, kinds, epochs: int, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """One seed of expert `key` in each of `kinds`, trained together on the same batches (`x`, `y`:
    `expert_samples`) from the same init and M_I's labels, for `epochs`: the recipe's, or another
    count (the longer-training control, trainer/epochs_control.py), whose files are kept apart.
    Returns the fit's summary; None when every kind's weights exist."""
    cfg = ctx.cfg
    other = None if epochs == cfg.epochs_expert else epochs
    rel = {kind: files.expert(kind, key, seed, other) for kind in kinds}
    if all((ctx.work / r).is_file() for r in rel.values()):
        return None
    init = expert_init(ctx, key)
    jobs = [Job(kind, copy.deepcopy(init), kind, ctx.target_mask(sub)) for kind in kinds]
    spec = ctx.spec(epochs, cfg.expert_lr, seed=cfg.seed + 1000 * seed)
    name = f"experts/{f'epochs{other}/' if other else ''}{key}/seed{seed}"
    fit = ctx.fit(jobs, x, y, expert_teacher_labels(ctx, key), spec, name, f"expert {key} seed {seed} ({'+'.join(kinds)}, {epochs} epochs)")
    for j in jobs:
        ctx.save_model(j.model, rel[j.name])
    return fit


def expert_teacher_labels(ctx: RunContext, key: str) -> torch.Tensor:
    """M_I's hard labels for the experts' training samples (`expert_samples` order)."""
    if ctx.cfg.teacher_recipe == "shared":
        return ctx.teacher_labels()[ctx.expert_samples()]
    return load_file(str(ctx.work / files.subset_teacher_labels(key)))["train"]


def expert_init(ctx: RunContext, key: str) -> torch.nn.Module:
    """The paper's init of m_I: M_I pruned to the expert shape by loss-based importance (cached);
    or, for small budgets, the expert-shaped generalist (the generalist teacher pruned and distilled)."""
    cfg = ctx.cfg
    if cfg.expert_init == "generalist":
        return ctx.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape))
    if cfg.expert_init != "pruned-teacher":
        raise SystemExit(f"unknown expert init {cfg.expert_init!r}")
    rel = files.expert_init(key)
    if not (ctx.work / rel).is_file():
        teacher = ctx.load_vit(cfg.teacher_shape, ctx.expert_teacher_rel(key)).to(ctx.device)
        imp = compute_importance(teacher, ctx.importance_batches())
        teacher.cpu()
        ctx.save_model(prune_vit(teacher, ctx.arch(cfg.teacher_shape), ctx.arch(cfg.expert_shape), imp), rel)
    return ctx.load_vit(cfg.expert_shape, rel)


def expert_seeds(ctx: RunContext, busy: dict[str, float]) -> dict[str, list[int]]:
    """Seeds per expert: `expert_seeds` for every expert, or, with `busy_experts` N, for the N
    experts that most validation frames are offloaded to (3H at tau 0.9) and one seed for the
    rest, where controls over seeds matter least for the system. `busy`: `offload_share()`."""
    cfg = ctx.cfg
    keys, _ = ctx.experts_of()
    if not cfg.busy_experts or cfg.busy_experts >= len(keys):
        return {k: list(range(cfg.expert_seeds)) for k in keys}
    top = sorted(keys, key=lambda k: (-busy.get(k, 0.0), keys.index(k)))[: cfg.busy_experts]
    return {k: list(range(cfg.expert_seeds if k in top else 1)) for k in keys}


def offload_share(ctx: RunContext, tau: float = 0.9) -> dict[str, float]:
    """Share (%) of the validation frames offloaded to each expert by the edge generalist at tau."""
    cfg = ctx.cfg
    edge = ctx.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
    dec = decide(ctx.logits(edge, ctx.data.x_val).numpy(), ctx.need("partition")["partition"], cfg.k)
    keys, counts = np.unique(dec.expert[dec.offloaded(tau)].astype(str), return_counts=True)
    return {str(k): round(100.0 * int(c) / len(dec.conf), 2) for k, c in zip(keys, counts)}


def _compact_experts(ctx: RunContext, keys, subsets, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Tails (the last --tail-blocks blocks, norm, head) on the frozen 4H generalist trunk, trained
    with the progressive schedule from the same teacher labels; the trunk's tokens are cached."""
    cfg = ctx.cfg
    base = ctx.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape))
    arch = ctx.arch(cfg.expert_shape)
    t0 = time.time()
    trunk = as_fp16(base).to(ctx.device)  # the trunk as stored in the pack
    tok_dtype = torch.float16 if ctx.device.type == "cpu" else torch.float32
    tokens = predict(ctx.trunk_fn(trunk), x, 512, ctx.device, out_dtype=tok_dtype)
    jobs = [
        Job(f"compact-{key}", ExpertTail.from_vit(base, arch, cfg.tail_blocks), "progressive", ctx.target_mask(sub))
        for key, sub in zip(keys, subsets)
    ]
    teach = {j.name: expert_teacher_labels(ctx, j.name.split("-", 1)[1]) for j in jobs}
    spec = ctx.spec(cfg.epochs_expert, cfg.expert_lr, aug=False)
    summary = ctx.fit(jobs, tokens, y, teach, spec, "compact", f"{len(jobs)} compact (tail) experts")
    for j in jobs:
        ctx.save_model(j.model, files.compact_expert(j.name.split("-", 1)[1]))
    return {"tail_blocks": cfg.tail_blocks, "trunk_blocks": ctx.trunk_blocks(), "fit": summary, "wall_s": round(time.time() - t0, 1)}
