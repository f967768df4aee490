"""Training and inference loops shared by every step: several models per batch, checkpoints, resume.

Checkpoints are safetensors (model and AdamW state) plus a small JSON file; nothing is pickled.
A fit interrupted at any point resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn

from askexpert.hardware import cpu_has_bf16
from askexpert.models import use_math_attention
from trainer.losses import distill_loss, sample_weights, weight_for


@dataclass
class Job:
    """One model trained in a fit: its schedule and target classes (for experts)."""

    name: str
    model: nn.Module
    schedule: str = "none"  # none | progressive | static | uniform
    target_mask: torch.Tensor | None = None  # bool per class: D_I
    use_teacher: bool = True
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FitSpec:
    """What one fit needs besides its models and data: the optimisation schedule (AdamW, linear
    warm-up then cosine to 1% of the peak), the progressive weights, augmentation and the seed."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    clip: float = 1.0  # gradient-norm clipping; 0: none
    max_weight: float = 14.0  # W in eq. 1
    omega_schedule: str = "step"
    aug: dict | None = None
    seed: int = 0


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def autocast(device: torch.device):
    """bf16 autocast on CUDA, and on CPUs with native bf16; fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_bf16() else nullcontext()


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random translation by up to `pad` pixels and horizontal flip.

    `x` is normalised; `fill` (per channel) is the normalised value of a black pixel, so the
    border a translation uncovers is black in pixel space, like the data's own background, and not
    the mean grey that zero padding after normalisation would paint (a border the test set never has).
    """
    b, c, h, w = x.shape
    if pad:
        f = torch.zeros(c, device=x.device) if fill is None else fill.to(x.device, x.dtype)
        xp = torch.nn.functional.pad(x - f[None, :, None, None], (pad, pad, pad, pad)) + f[None, :, None, None]
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(b, c, h, w + 2 * pad)
        xp = torch.gather(xp, 2, rows)
        cols = (ox[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(b, c, h, w)
        x = torch.gather(xp, 3, cols)
    if flip:
        m = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


def lr_at(step: int, total: int, base: float, warm: int, floor: float = 0.01) -> float:
    """Linear warm-up over `warm` steps, then cosine from `base` down to `floor * base`."""
    warm = max(1, min(warm, total))
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def _save_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(ckpt_dir: Path, jobs: list[Job], epochs_done: int, extra: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    groups = {}
    for job in jobs:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in job.model.state_dict().items()}, str(ckpt_dir / f"{job.name}.model.safetensors")
        )
        opt_t, groups[job.name] = _save_optimizer(job.optimizer)
        save_file(opt_t, str(ckpt_dir / f"{job.name}.optim.safetensors"))
    tmp = ckpt_dir / "state.json.tmp"
    tmp.write_text(json.dumps({"epochs_done": epochs_done, "optim_groups": groups, **extra}))
    tmp.replace(ckpt_dir / "state.json")  # atomic: a crash mid-save keeps the previous epoch


def load_checkpoint(ckpt_dir: Path, jobs: list[Job], device: torch.device) -> dict | None:
    path = ckpt_dir / "state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    for job in jobs:
        job.model.load_state_dict(load_file(str(ckpt_dir / f"{job.name}.model.safetensors"), device=str(device)))
        _load_optimizer(
            job.optimizer, load_file(str(ckpt_dir / f"{job.name}.optim.safetensors"), device=str(device)), state["optim_groups"][job.name]
        )
    return state


def fit(
    jobs: list[Job],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    teacher_labels: torch.Tensor | dict[str, torch.Tensor] | None,
    spec: FitSpec,
    *,
    device: torch.device = torch.device("cpu"),
    ckpt_dir: Path | None = None,
    desc: str = "train",
    log: Callable[[str], None] = print,
) -> dict:
    """Train every job on the same mini-batches of (inputs, labels[, teacher labels]).

    `teacher_labels` is one tensor for all jobs, or one per job name (per-subset teachers).
    Returns a summary (wall time, final losses). Jobs with schedule progressive/static apply eq. 1-3.
    """
    epochs, batch_size, lr = spec.epochs, spec.batch_size, spec.lr
    n = len(labels)
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged last batch
    total = epochs * steps_per_epoch
    for job in jobs:
        job.model.to(device).train()
        if device.type == "cpu":
            use_math_attention(job.model)
        decay = [p for p in job.model.parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for p in job.model.parameters() if p.ndim < 2 and p.requires_grad]
        job.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            fused=device.type == "cuda",
        )
    start_epoch = 0
    if ckpt_dir is not None:
        state = load_checkpoint(ckpt_dir, jobs, device)
        if state is not None:
            start_epoch = int(state["epochs_done"])
            log(f"{desc}: resuming after epoch {start_epoch}/{epochs} from {ckpt_dir}")
    inputs_d, labels_d = inputs.to(device), labels.to(device)
    if isinstance(teacher_labels, torch.Tensor):
        teacher_labels = {j.name: teacher_labels for j in jobs}
    teach_d = {k: v.to(device) for k, v in (teacher_labels or {}).items()}
    t0 = time.time()
    losses = {j.name: float("nan") for j in jobs}
    with progress_bar() as bar:
        task = bar.add_task(desc, total=total, completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, epochs):
            gen = torch.Generator().manual_seed(spec.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=gen).to(device)
            running = {j.name: torch.zeros((), device=device) for j in jobs}  # summed on the device: no sync per step
            for s in range(steps_per_epoch):
                step = epoch * steps_per_epoch + s
                idx = perm[s * batch_size : (s + 1) * batch_size]
                x, y = inputs_d[idx], labels_d[idx]
                if x.dtype != torch.float32 and device.type == "cpu":
                    x = x.float()
                if spec.aug:
                    x = augment(x, spec.aug.get("pad", 0), spec.aug.get("flip", False), gen, spec.aug.get("fill"))
                t = (epoch + s / steps_per_epoch) if spec.omega_schedule == "step" else float(epoch)
                cur_lr = lr_at(step, total, lr, round(spec.warmup_epochs * steps_per_epoch))
                for job in jobs:
                    for g in job.optimizer.param_groups:
                        g["lr"] = cur_lr
                    w = None
                    if job.schedule != "none":
                        w = sample_weights(y, job.target_mask, weight_for(job.schedule, t, epochs, spec.max_weight))
                    ty = teach_d[job.name][idx] if (job.use_teacher and job.name in teach_d) else None
                    with autocast(device):
                        logits = job.model(x)
                    loss = distill_loss(logits, y, ty, w)
                    job.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if spec.clip:
                        torch.nn.utils.clip_grad_norm_(job.model.parameters(), spec.clip)
                    job.optimizer.step()
                    running[job.name] += loss.detach()
                info = ""
                if s % 50 == 49 or s == steps_per_epoch - 1:
                    info = f"ep {epoch + 1}/{epochs} loss {float(sum(running.values())) / (len(jobs) * (s + 1)):.3f}"
                bar.update(task, advance=1, **({"info": info} if info else {}))
            losses = {k: float(v) / steps_per_epoch for k, v in running.items()}
            if ckpt_dir is not None:
                save_checkpoint(ckpt_dir, jobs, epoch + 1, {"desc": desc, "losses": losses})
    for job in jobs:
        job.model.eval()
    return {"wall_s": round(time.time() - t0, 1), "epochs": epochs, "steps": total, "final_loss": losses}


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    batch_size: int = 512,
    device: torch.device = torch.device("cpu"),
    out_dtype=torch.float32,
) -> torch.Tensor:
    """Apply fn batch by batch (eval mode is the caller's business); outputs on the CPU."""
    if device.type == "cpu" and isinstance(fn, nn.Module):
        use_math_attention(fn)
    outs = []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size].to(device)
        if x.dtype != torch.float32 and device.type == "cpu":
            x = x.float()
        with autocast(device):
            outs.append(fn(x).float().cpu().to(out_dtype))
    return torch.cat(outs) if outs else torch.empty(0)
