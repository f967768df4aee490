"""Step 1, premise: the premise of the method, checked before any expert is trained.

A ladder of generalists (3H < 4H < 6H < teacher, each step >= 1 pt on the validation split) at each
model setting of `premise_grid` ("HDxDEPTH[@LR]": head dim, depth, teacher LR), each shape trained
from scratch with cross-entropy for `premise_epochs`. A setting whose models all saturate at one
accuracy leaves nothing for a bigger or more specialised model to add. The choice is the cheapest
setting (fewest ladder parameters) where the ladder holds.
"""

from __future__ import annotations

import numpy as np
import torch

from askexpert.models import build_vit
from trainer.context import RunContext
from trainer.engine import Job


def parse_premise(item: str, default_lr: float) -> tuple[int, int, float]:
    """'16x3' -> (16, 3, default_lr); '16x3@2e-3' -> (16, 3, 0.002)."""
    try:
        shape, _, lr = item.partition("@")
        hd, depth = (int(v) for v in shape.lower().split("x"))
        return hd, depth, float(lr) if lr else default_lr
    except ValueError:
        raise SystemExit(f"premise setting {item!r}: expected HEADDIMxDEPTH[@LR], e.g. 16x3 or 16x3@2e-3") from None


def ladder(ctx: RunContext) -> list[str]:
    """The generalist shapes from the edge model up to the teacher, smallest first."""
    cfg = ctx.cfg
    shapes = {cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes, cfg.teacher_shape}
    return sorted(shapes, key=lambda s: int(s[:-1]))


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    if (done := ctx.info("premise")) is not None:
        return done  # also when an earlier `trainer premise` ran it in this work folder
    if not cfg.premise_grid:
        return {}
    results = ctx.info("premise-fits") or {}
    for item in cfg.premise_grid:
        if item not in results:
            results[item] = _fit_setting(ctx, item)
            ctx.set_info("premise-fits", results)
    holding = [k for k in cfg.premise_grid if results[k]["ladder_holds"]]
    chosen = (
        min(holding, key=lambda k: (results[k]["ladder_params"], -float(np.mean(list(results[k]["val_top1"].values())))))
        if holding
        else None
    )
    info = {
        "ladder": ladder(ctx),
        "epochs": cfg.premise_epochs,
        "rule": "cheapest setting whose ladder steps are all >= 1 pt on validation",
        "settings": results,
        "chosen": chosen,
        "recipe": {"head_dim": cfg.head_dim, "depth": cfg.depth, "lr": cfg.lr},
        "recipe_is_chosen": chosen is not None and (results[chosen]["head_dim"], results[chosen]["depth"]) == (cfg.head_dim, cfg.depth),
    }
    ctx.set_info("premise", info)
    ctx.log(f"[premise] chosen: {chosen}; the recipe {'is' if info['recipe_is_chosen'] else 'is NOT'} that setting")
    return info


def _fit_setting(ctx: RunContext, item: str) -> dict:
    """The ladder of one premise setting, trained from scratch together, scored on validation."""
    cfg, d = ctx.cfg, ctx.data
    shapes = ladder(ctx)
    hd, depth, lr = parse_premise(item, cfg.lr)
    torch.manual_seed(cfg.seed)
    jobs = [Job(sh, build_vit(ctx.arch(sh, head_dim=hd, depth=depth))) for sh in shapes]
    summary = ctx.fit(jobs, d.x_train, d.y_train, None, ctx.spec(cfg.premise_epochs, lr), f"premise/{item}", f"premise {item}")
    val = {j.name: ctx.acc(ctx.logits(j.model, d.x_val), d.y_val) for j in jobs}
    steps = [round(val[b] - val[a], 2) for a, b in zip(shapes, shapes[1:])]
    ctx.log(f"[premise] {item}: " + " < ".join(f"{k} {v}%" for k, v in val.items()) + f" (steps {steps})")
    return {
        "head_dim": hd,
        "depth": depth,
        "lr": lr,
        "val_top1": val,
        "steps_pt": steps,
        "ladder_holds": all(x >= 1.0 for x in steps),
        "ladder_params": sum(sum(p.numel() for p in j.model.parameters()) for j in jobs),
        "wall_s": summary["wall_s"],
    }
