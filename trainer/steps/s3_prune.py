"""Step 3, prune: the teacher pruned to the edge and expert shapes (3H, 4H) and every smaller
baseline by loss-based importance, then all of them distilled together (CE(y)/2 + CE(teacher hard
label)/2). 3H is the edge generalist; 4H the shared trunk, the 4H baseline and, with
`--expert-init generalist`, every expert's start."""

from __future__ import annotations

import time

from trainer import workfiles as files
from trainer.context import RunContext
from trainer.engine import Job
from trainer.prune import compute_importance, prune_vit


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("prune")) is not None:
        return done
    ctx.need("teacher")
    info = _prune_from_teacher(ctx, student_shapes(ctx), "prune")
    ctx.set_info("prune", info)
    ctx.log("[prune] done: " + ", ".join(f"{k} val {v['val_top1']}%" for k, v in info["models"].items()))
    return info


def student_shapes(ctx: RunContext) -> list[str]:
    """The generalists pruned from the teacher and distilled together: edge, expert-shaped and
    every baseline that is not the teacher itself."""
    cfg = ctx.cfg
    shapes = [cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes]
    return [s for i, s in enumerate(shapes) if s not in shapes[:i] and s != cfg.teacher_shape]


def _prune_from_teacher(ctx: RunContext, shapes: list[str], name: str) -> dict:
    """Prune the teacher to each shape and distill all of them together."""
    cfg = ctx.cfg
    teacher = ctx.load_vit(cfg.teacher_shape, files.TEACHER)
    src = ctx.arch(cfg.teacher_shape)
    batches = ctx.importance_batches()
    n = sum(len(b[1]) for b in batches)
    t0 = time.time()
    imp = compute_importance(teacher.to(ctx.device), batches)
    teacher.cpu()
    imp_s = round(time.time() - t0, 1)
    jobs, pruned_val = [], {}
    for shape in shapes:
        student = prune_vit(teacher, src, ctx.arch(shape), imp)
        pruned_val[shape] = ctx.acc(ctx.logits(student, ctx.data.x_val), ctx.data.y_val)
        ctx.log(f"[{name}] pruned {cfg.teacher_shape} -> {shape}: val top-1 before distillation {pruned_val[shape]}%")
        jobs.append(Job(f"{shape}", student))
    spec = ctx.spec(cfg.epochs_distill, cfg.distill_lr)
    summary = ctx.fit(jobs, ctx.data.x_train, ctx.data.y_train, ctx.teacher_labels(), spec, name, f"distill {'+'.join(shapes)}")
    info = {"fit": summary, "importance_s": imp_s, "importance_samples": n, "models": {}}
    for job in jobs:
        ctx.save_model(job.model, files.generalist(job.name))
        info["models"][job.name] = {
            "arch": ctx.arch(job.name).to_dict(),
            "pruned_from": cfg.teacher_shape,
            "val_top1_pruned": pruned_val[job.name],
            "val_top1": ctx.acc(ctx.logits(job.model, ctx.data.x_val), ctx.data.y_val),
        }
    return info
