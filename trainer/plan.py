"""`trainer plan`: what a recipe will train and what it will cost, before anything trains.

Lists every fit of every step (models, epochs, samples, optimiser steps) and estimates device
hours from a training step timed here, on this machine's device, for each model shape at the
run's image size (a step of `--measure-batch` images, scaled linearly to the global batch).
GPU-hours are one device's; N devices under torchrun take about GPU-hours / N of wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from askexpert.datasets import load_dataset
from askexpert.models import ViTArch, build_vit, use_math_attention
from trainer.partition import expert_list


@dataclass
class PlannedFit:
    step: str
    models: list[str]  # one shape per model trained together on the same batches
    epochs: int
    samples: int


def _sizes(cfg) -> tuple[int, int, int, int]:
    """Training-split size after the validation hold-out and caps; the experts' share; image size; channels."""
    full = load_dataset(cfg.dataset, "train")
    n = len(full) - int(round(len(full) * cfg.val_fraction))
    n = min(n, cfg.max_train_samples) if cfg.max_train_samples else n
    ne = min(n, cfg.expert_train_samples) if cfg.expert_train_samples else n
    return n, ne, int(full.images.shape[1]), int(full.images.shape[-1])


def fits(cfg, n: int, ne: int) -> list[PlannedFit]:
    """Every fit `trainer pack` runs with this config, in order (the premise sweep when a grid is set)."""
    ladder = sorted({cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes, cfg.teacher_shape}, key=lambda s: int(s[:-1]))
    out = [PlannedFit(f"premise {g}", ladder, cfg.premise_epochs, n) for g in cfg.premise_grid]
    out.append(PlannedFit("teacher M_D", [cfg.teacher_shape], cfg.epochs_teacher, n))
    students = [s for i, s in enumerate([cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes]) if s != cfg.teacher_shape]
    out.append(PlannedFit("prune + distill", list(dict.fromkeys(students)), cfg.epochs_distill, n))
    n_exp = len(expert_list(cfg.subsets, cfg.k))
    if cfg.teacher_recipe == "per-subset":
        out += [PlannedFit("subset teachers M_I", [cfg.teacher_shape], cfg.epochs_subset_teacher, ne)] * n_exp
    busy = cfg.busy_experts if 0 < cfg.busy_experts < n_exp else n_exp
    runs = busy * cfg.expert_seeds + (n_exp - busy)
    out += [PlannedFit("experts (progressive, static, uniform)", [cfg.expert_shape] * 3, cfg.epochs_expert, ne)] * runs
    return out


def step_seconds(cfg, shape: str, img: int, chans: int, batch: int) -> float:
    """Seconds of one training step (forward, backward, AdamW) of `shape` on `batch` images at the
    run's image size, on the run's device (bf16 autocast as in training): the fastest of 5 after 2
    warm-up steps, the least disturbed by other work on a shared machine."""
    from trainer.context import auto_patch
    from trainer.engine import autocast

    device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")
    size = cfg.img_size or img
    patch = cfg.patch_size or auto_patch(size)
    arch = ViTArch.from_shape(
        shape, depth=cfg.depth, patch_size=patch, img_size=size, in_chans=chans, num_classes=100, head_dim=cfg.head_dim
    )
    model = build_vit(arch).to(device).train()
    if device.type == "cpu":
        use_math_attention(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, chans, size, size, device=device), torch.randint(0, 100, (batch,), device=device)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        with autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times[2:])


def plan(cfg, measure_batch: int = 8, log=print) -> str:
    """The plan as Markdown: one row per step (fits, models, epochs, optimiser steps, hours)."""
    n, ne, img, chans = _sizes(cfg)
    planned = fits(cfg, n, ne)
    batch = min(measure_batch, cfg.batch_size)
    shapes = sorted({s for f in planned for s in f.models}, key=lambda s: int(s[:-1]))
    per_image = {s: step_seconds(cfg, s, img, chans, batch) / batch for s in shapes}
    log("step time per image: " + ", ".join(f"{s} {v * 1e3:.2f} ms" for s, v in per_image.items()))
    rows: dict[str, list] = {}
    for f in planned:
        steps = f.epochs * max(1, f.samples // cfg.batch_size)
        secs = steps * cfg.batch_size * sum(per_image[s] for s in f.models)
        r = rows.setdefault(f.step, [0, f.models, f.epochs, 0, 0.0])
        r[0], r[3], r[4] = r[0] + 1, r[3] + steps, r[4] + secs
    from trainer.context import auto_patch

    lines = [
        f"plan for {cfg.dataset}: {n} training images ({ne} for subset teachers and experts), global batch {cfg.batch_size}, "
        f"{cfg.img_size or img} px, patch {cfg.patch_size or auto_patch(cfg.img_size or img)}, depth {cfg.depth}, head dim {cfg.head_dim}",
        f"step times measured on {cfg.device} with batches of {batch}, scaled to {cfg.batch_size}",
        "",
        "| step | fits | models per fit | epochs | optimiser steps | device-hours |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {k} | {r[0]} | {'+'.join(r[1])} | {r[2]} | {r[3]} | {r[4] / 3600:.2f} |" for k, r in rows.items()]
    total = sum(r[4] for r in rows.values()) / 3600
    lines += ["", f"total: {total:.1f} device-hours ({cfg.device}); with N devices under torchrun about {total:.1f}/N hours of wall time,"]
    lines.append("plus evaluation passes (teacher labels, validation and test logits), not counted")
    return "\n".join(lines)
