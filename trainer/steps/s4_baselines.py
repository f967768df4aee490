"""Step 4, baselines: the same-size generalists of the controls (4H and 6H co-inference): the
distilled students of step prune, or the teacher itself when a baseline has its shape."""

from __future__ import annotations

from trainer import workfiles as files
from trainer.context import RunContext


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("baselines")) is not None:
        return done
    cfg = ctx.cfg
    have = set(ctx.need("prune")["models"])
    info: dict = {"models": {}}
    for s in cfg.baseline_shapes:
        if s in have:
            info["models"][s] = {"arch": ctx.arch(s).to_dict(), "source": "pruned and distilled (step prune)"}
        else:  # the teacher's own shape
            ctx.save_model(ctx.load_vit(s, files.TEACHER), files.generalist(s))
            info["models"][s] = {"arch": ctx.arch(s).to_dict(), "source": "the teacher itself (cross-entropy)"}
    ctx.set_info("baselines", info)
    return info
