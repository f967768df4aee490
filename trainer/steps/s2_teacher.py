"""Step 2, teacher: the generalist teacher M_D (default 6H; 12H in the reference recipe) trained
with cross-entropy on the whole training split; its hard labels on the training split are cached
for the distillation of the pruned generalists."""

from __future__ import annotations

from safetensors.torch import save_file

from trainer import distributed as dist
from trainer import workfiles as files
from trainer.context import RunContext
from trainer.engine import Job


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("teacher")) is not None:
        return done
    cfg = ctx.cfg
    arch = ctx.arch(cfg.teacher_shape)
    model = ctx.new_teacher(drop_path_rate=0.1 if cfg.epochs_teacher >= 20 else 0.0)
    ctx.log(f"[teacher] {cfg.teacher_shape} depth {cfg.depth} patch {ctx.patch} on {len(ctx.data.y_train)} images")
    spec = ctx.spec(cfg.epochs_teacher, cfg.lr, teacher=True)
    summary = ctx.fit([Job("teacher", model)], ctx.data.x_train, ctx.data.y_train, None, spec, "teacher", "teacher")
    ctx.save_model(model, files.TEACHER)
    train_logits = ctx.logits(model, ctx.data.x_train)
    if dist.is_main():
        save_file({"train": train_logits.argmax(1).contiguous()}, str(ctx.work / files.TEACHER_LABELS))
    info = {
        "shape": cfg.teacher_shape,
        "arch": arch.to_dict(),
        "fit": summary,
        "val_top1": ctx.acc(ctx.logits(model, ctx.data.x_val), ctx.data.y_val),
        "train_top1": ctx.acc(train_logits, ctx.data.y_train),
    }
    ctx.set_info("teacher", info)
    ctx.log(f"[teacher] done: val top-1 {info['val_top1']}%, {summary['wall_s']} s")
    return info
