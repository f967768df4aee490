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
from typing import Callable, Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from askexpert.hardware import cpu_has_bf16, usable_cores
from askexpert.models import use_math_attention
from trainer import distributed as dist
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
    workers: int = field(default_factory=lambda: min(4, usable_cores()))  # DataLoader workers per rank (streamed data)


def progress_bar() -> Progress:
    """A progress bar on rank 0 (the only process, or torchrun's first)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=not dist.is_main(),
    )


def autocast(device: torch.device):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (unless `ATE_CPU_BF16=0`); fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_bf16() else nullcontext()


def augment(
    x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator, fill: torch.Tensor | None = None, part: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """Random translation by up to `pad` pixels and horizontal flip.

    `part` = (rank, N): `x` is that rank's share of a global batch (every N-th sample from rank);
    the random draws are made for the whole global batch and sliced, so N processes augment each
    sample as one process would.

    `x` is normalised; `fill` (per channel) is the normalised value of a black pixel, so the
    border a translation uncovers is black in pixel space, like the data's own background, and not
    the mean grey that zero padding after normalisation would paint (a border the test set never has).
    """
    b, c, h, w = x.shape
    r, n = part
    if pad:
        f = torch.zeros(c, device=x.device) if fill is None else fill.to(x.device, x.dtype)
        xp = torch.nn.functional.pad(x - f[None, :, None, None], (pad, pad, pad, pad)) + f[None, :, None, None]
        oy = torch.randint(0, 2 * pad + 1, (b * n,), generator=gen)[r::n].to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b * n,), generator=gen)[r::n].to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(b, c, h, w + 2 * pad)
        xp = torch.gather(xp, 2, rows)
        cols = (ox[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(b, c, h, w)
        x = torch.gather(xp, 3, cols)
    if flip:
        m = (torch.rand(b * n, generator=gen)[r::n] < 0.5).to(x.device)
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


@dataclass
class FitEnv:
    """Where a fit runs and reports: device, checkpoint folder (None: no checkpoints), name, log."""

    device: torch.device = torch.device("cpu")
    ckpt_dir: Path | None = None
    desc: str = "train"
    log: Callable[[str], None] = print


class Batches:
    """This process's mini-batches of each epoch. The order is a DistributedSampler's (seeded by the
    fit's seed and `set_epoch`): global batch s is positions s*B..(s+1)*B of one permutation and
    rank r takes every N-th of them from r, so N processes see exactly the batches of one process.
    Inputs are tensors (moved to the device once) or a map-style data set of (image, index) that
    DataLoader workers decode per batch (`askexpert.datasets.StreamingImages`)."""

    def __init__(self, inputs, n: int, spec: FitSpec, device: torch.device) -> None:
        self.local, self.steps, self.device, self.workers = (
            dist.local_batch(spec.batch_size),
            max(1, n // spec.batch_size),
            device,
            spec.workers,
        )
        self.sampler = DistributedSampler(range(n), dist.world(), dist.rank(), shuffle=True, seed=spec.seed * 1000, drop_last=True)
        self.inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs

    def augment_generator(self, epoch: int) -> torch.Generator:
        """The epoch's random stream for augmentation, the same on every rank: the sampler's seed,
        advanced past its permutation, as one process drew it before DDP (so one-process runs
        reproduce earlier packs exactly)."""
        gen = torch.Generator().manual_seed(self.sampler.seed + epoch)
        torch.randperm(len(self.sampler.dataset), generator=gen)
        return gen

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(sample indices, images) per step, on the device."""
        self.sampler.set_epoch(epoch)
        if isinstance(self.inputs, torch.Tensor):
            order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.device)
            for s in range(self.steps):
                idx = order[s * self.local : (s + 1) * self.local]
                yield idx, self.inputs[idx]
            return
        pin = self.device.type == "cuda"
        loader = DataLoader(self.inputs, self.local, sampler=self.sampler, num_workers=self.workers, drop_last=True, pin_memory=pin)
        for _, (x, idx) in zip(range(self.steps), loader):
            yield idx.to(self.device), x.to(self.device, non_blocking=True)


def _prepare(jobs: list[Job], spec: FitSpec, device: torch.device) -> dict[str, nn.Module]:
    """Each job's model on the device with its AdamW (decay on matrices only); returns what each
    job's forward runs: the model, DDP-wrapped under torchrun."""
    nets = {}
    for job in jobs:
        job.model.to(device).train()
        if device.type == "cpu":
            use_math_attention(job.model)
        decay = [p for p in job.model.parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for p in job.model.parameters() if p.ndim < 2 and p.requires_grad]
        job.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=spec.lr,
            fused=device.type == "cuda",
        )
        nets[job.name] = dist.wrap(job.model, device)
    return nets


def _train_step(
    jobs: list[Job], nets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, teach: dict, progress: tuple, spec: FitSpec
) -> dict:
    """One optimiser step of every job on the same batch; `progress` = (t in epochs, LR, T).
    Each rank's loss is eq. 3 over its share divided by that (equal) share, so DDP's average of the
    ranks' gradients is the whole batch's eq. 3 over B, however the target samples fall."""
    t, lr, total = progress
    out = {}
    for job in jobs:
        for g in job.optimizer.param_groups:
            g["lr"] = lr
        w = None if job.schedule == "none" else sample_weights(y, job.target_mask, weight_for(job.schedule, t, total, spec.max_weight))
        with autocast(x.device):
            logits = nets[job.name](x)
        loss = distill_loss(logits, y, teach.get(job.name) if job.use_teacher else None, w)
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.clip:
            torch.nn.utils.clip_grad_norm_(job.model.parameters(), spec.clip)
        job.optimizer.step()
        out[job.name] = loss.detach()
    return out


def _resume(jobs: list[Job], env: FitEnv, epochs: int) -> int:
    state = load_checkpoint(env.ckpt_dir, jobs, env.device) if env.ckpt_dir is not None else None
    if state is None:
        return 0
    env.log(f"{env.desc}: resuming after epoch {state['epochs_done']}/{epochs} from {env.ckpt_dir}")
    return int(state["epochs_done"])


def fit(jobs: list[Job], inputs, labels: torch.Tensor, teacher_labels, spec: FitSpec, env: FitEnv | None = None) -> dict:
    """Train every job on the same mini-batches of (inputs, labels[, teacher labels]); under torchrun
    each process trains its share of every batch (DDP), and rank 0 alone writes checkpoints.

    `inputs`: a tensor, or a data set of (image, index) decoded per batch. `teacher_labels`: one
    tensor for all jobs, or one per job name (per-subset teachers). Jobs with schedule progressive
    or static apply eq. 1-3. Returns a summary (wall time, steps, final losses averaged over ranks).
    """
    env = env or FitEnv()
    nets = _prepare(jobs, spec, env.device)
    start = _resume(jobs, env, spec.epochs)
    batches = Batches(inputs, len(labels), spec, env.device)
    labels_d, total = labels.to(env.device), spec.epochs * batches.steps
    if isinstance(teacher_labels, torch.Tensor):
        teacher_labels = {j.name: teacher_labels for j in jobs}
    teach_d = {k: v.to(env.device) for k, v in (teacher_labels or {}).items()}
    t0, losses = time.time(), {j.name: float("nan") for j in jobs}
    with progress_bar() as bar:
        task = bar.add_task(env.desc, total=total, completed=start * batches.steps, info="")
        for epoch in range(start, spec.epochs):
            gen = batches.augment_generator(epoch)  # the same on every rank
            running = {j.name: torch.zeros((), device=env.device) for j in jobs}  # summed on the device: no sync per step
            for s, (idx, x) in enumerate(batches.epoch(epoch)):
                x = _augment_batch(x, spec, gen)
                t = (epoch + s / batches.steps) if spec.omega_schedule == "step" else float(epoch)
                lr = lr_at(epoch * batches.steps + s, total, spec.lr, round(spec.warmup_epochs * batches.steps))
                step = _train_step(jobs, nets, x, labels_d[idx], {k: v[idx] for k, v in teach_d.items()}, (t, lr, spec.epochs), spec)
                for k, v in step.items():
                    running[k] += v
                if s % 50 == 49 or s == batches.steps - 1:  # a device sync: only now and then
                    bar.update(task, info=f"ep {epoch + 1}/{spec.epochs} loss {float(sum(running.values())) / (len(jobs) * (s + 1)):.3f}")
                bar.update(task, advance=1)
            losses = {k: float(dist.mean(v)) / batches.steps for k, v in running.items()}
            _checkpoint(env, jobs, epoch + 1, losses)
    for job in jobs:
        job.model.eval()
    return {"wall_s": round(time.time() - t0, 1), "epochs": spec.epochs, "steps": total, "final_loss": losses}


def _augment_batch(x: torch.Tensor, spec: FitSpec, gen: torch.Generator) -> torch.Tensor:
    if x.dtype != torch.float32 and x.device.type == "cpu":
        x = x.float()
    if not spec.aug:
        return x
    return augment(x, spec.aug.get("pad", 0), spec.aug.get("flip", False), gen, spec.aug.get("fill"), part=(dist.rank(), dist.world()))


def _checkpoint(env: FitEnv, jobs: list[Job], epochs_done: int, losses: dict) -> None:
    """Rank 0 writes the epoch's checkpoint; every rank waits until it is there."""
    if env.ckpt_dir is not None:
        if dist.is_main():
            save_checkpoint(env.ckpt_dir, jobs, epochs_done, {"desc": env.desc, "losses": losses})
        dist.barrier()


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
