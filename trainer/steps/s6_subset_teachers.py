"""Step 6, subset teachers (the paper's per-subset recipe): a teacher M_I per expert, fine-tuned
from the generalist teacher with the progressive schedule (eq. 1-2) on label cross-entropy, on the
experts' training samples; its hard labels on those (clean) images are cached for the experts'
distillation. With `--teacher-recipe shared` every expert learns from M_D and nothing trains here."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from trainer import distributed as dist
from trainer import workfiles as files
from trainer.context import RunContext
from trainer.engine import Job


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("subset-teachers")) is not None:
        return done
    cfg, d = ctx.cfg, ctx.data
    ctx.need("teacher")
    if cfg.teacher_recipe not in ("shared", "per-subset"):
        raise SystemExit(f"unknown teacher recipe {cfg.teacher_recipe!r}")
    info: dict = {"recipe": cfg.teacher_recipe, "models": {}}
    keys, subsets = ctx.experts_of()
    ctx.need("prune")
    gen_val = ctx.logits(ctx.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape)), d.x_val)
    part_of = torch.tensor(ctx.need("partition")["partition"])
    for key, sub in zip(keys, subsets) if cfg.teacher_recipe == "per-subset" else []:
        m = subset_teacher(ctx, key, sub)
        lv = ctx.logits(m, d.x_val)
        on_target = torch.isin(part_of[d.y_val], torch.tensor(list(sub)))
        row = {
            "val_top1": ctx.acc(lv, d.y_val),
            "val_target_top1": ctx.acc(lv[on_target], d.y_val[on_target]),
            "generalist_val_target_top1": ctx.acc(gen_val[on_target], d.y_val[on_target]),
        }
        # the premise of distilling m_I from M_I: M_I beats the expert-shaped generalist on D_I
        row["margin_over_generalist_pt"] = round(row["val_target_top1"] - row["generalist_val_target_top1"], 2)
        info["models"][key] = row
        ctx.log(
            f"[subset teachers] M_{key}: val {row['val_top1']}%, on target {row['val_target_top1']}% "
            f"({row['margin_over_generalist_pt']:+.2f} pt over the {cfg.expert_shape} generalist)"
        )
    ctx.set_info("subset-teachers", info)
    return info


def subset_teacher(ctx: RunContext, key: str, sub: tuple[int, ...]) -> torch.nn.Module:
    """M_I for expert `key` (target subsets `sub`), fine-tuned and its labels cached when missing;
    also what the longer-training control (trainer/epochs_control.py) trains for its experts alone."""
    cfg, rel = ctx.cfg, ctx.expert_teacher_rel(key)
    if not (ctx.work / rel).is_file():
        idx = ctx.expert_samples()
        x, y = ctx.data.x_train[idx], ctx.data.y_train[idx]
        pretrained = cfg.subset_teacher_init == "pretrained" and cfg.teacher_init
        m = ctx.new_teacher() if pretrained else ctx.load_vit(cfg.teacher_shape, files.TEACHER)
        job = Job(f"teacher-{key}", m, "progressive", ctx.target_mask(sub), use_teacher=False)
        spec = ctx.spec(cfg.epochs_subset_teacher, cfg.subset_teacher_lr, teacher=True)
        ctx.fit([job], x, y, None, spec, f"subset-teacher-{key}", f"teacher M_{key}")
        ctx.save_model(m, rel)
        labels = {"train": ctx.logits(m, x).argmax(1).contiguous()}
        if dist.is_main():
            save_file(labels, str(ctx.work / files.subset_teacher_labels(key)))
    return ctx.load_vit(cfg.teacher_shape, rel)
