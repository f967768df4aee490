"""What every step of `trainer pack` shares: the recipe, the work folder, the data, the device and
the log, and the ways steps read and write the work folder (weights, records, checkpoints).

A step is a function of this context (`trainer/steps/`); it finds the models and records of earlier
steps in the work folder by the names of `trainer/workfiles.py`, never by running them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from askexpert.datasets import list_dataset, load_dataset, train_val_split
from askexpert.models import ExpertTail, ViTArch, build_vit, trunk_tokens
from askexpert.routing import expert_key
from trainer import distributed as dist
from trainer import partition as part
from trainer import workfiles as files
from trainer.config import Config
from trainer.data import Data, subsample, to_tensor
from trainer.engine import FitEnv, FitSpec, Job, fit, predict
from trainer.results import PackReport

# the work folder's settings that a later run must share (else its models would not fit together)
FIXED_SETTINGS = ["dataset", "head_dim", "depth", "patch_size", "img_size", "max_train_samples", "seed", "val_fraction", "teacher_shape"]


def auto_patch(img_size: int) -> int:
    for p in (16, 8, 7, 4):
        if img_size % p == 0 and img_size // p >= 4:
            return p
    return 1


def as_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with its weights rounded to fp16, as stored in the pack, computing in fp32."""
    return copy.deepcopy(model).half().float().eval()


def load_data(cfg: Config) -> Data:
    """The three splits of a recipe: train and validation from the training split
    (seeded), test; normalised with the training split's per-channel statistics."""
    load = list_dataset if cfg.stream else load_dataset  # streamed: file lists, decoded per batch
    full = load(cfg.dataset, "train")
    train, val = train_val_split(full, cfg.val_fraction, cfg.seed)
    train = subsample(train, cfg.max_train_samples, cfg.seed + 1)
    val = subsample(val, cfg.max_val_samples, cfg.seed + 3)
    test = subsample(load(cfg.dataset, "test"), cfg.max_test_samples, cfg.seed + 2)
    if cfg.stream:
        from trainer.streaming import streamed_data

        return streamed_data(cfg, train, val, test)
    pix = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64) / 255.0
    # rounded as written to the manifest, so the runtime's preprocessing is exactly the trainer's
    mean, std = np.round(pix.mean(axis=0), 4), np.round(pix.std(axis=0) + 1e-8, 4)
    splits = (to_tensor(train, mean, std), to_tensor(val, mean, std), to_tensor(test, mean, std))
    return Data.of(splits, full, (mean, std), (train.images.shape[1], train.images.shape[-1]))


@dataclass
class RunContext:
    """One training run: its recipe (`cfg`), work folder, data, device, input size and patch, log."""

    cfg: Config
    work: Path
    data: Data
    device: torch.device
    img_size: int
    patch: int
    log: Callable[..., None]

    @classmethod
    def open(cls, cfg: Config, log: Callable[..., None] = print) -> RunContext:
        """The work folder (made, or checked to hold a run of the same settings) and the data loaded."""
        work = Path(cfg.work)
        work.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")
        if cfg.device == "cuda" and device.type != "cuda":
            raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
        torch.manual_seed(cfg.seed)
        data = load_data(cfg)
        img_size = cfg.img_size or data.img_size
        ctx = cls(cfg, work, data, device, img_size, cfg.patch_size or auto_patch(img_size), log)
        ctx._record_config()
        return ctx

    def _record_config(self) -> None:
        path = self.work / files.CONFIG
        recipe = self.recipe()
        if path.is_file():
            old = json.loads(path.read_text())
            diff = {k: (old.get(k), recipe.get(k)) for k in FIXED_SETTINGS if old.get(k) != recipe.get(k)}
            if diff:
                raise SystemExit(f"{self.work} was trained with other settings {diff}: use another --work or delete it")
        self.set_info("config", recipe)

    def recipe(self) -> dict:
        d = asdict(self.cfg)
        d["patch_size"], d["img_size"] = self.patch, self.img_size
        return d

    def arch(self, shape: str, head_dim: int = 0, depth: int = 0) -> ViTArch:
        """A shape of this run (its head dim and depth unless given: the premise sweep tries others)."""
        return ViTArch.from_shape(
            shape,
            head_dim=head_dim or self.cfg.head_dim,
            depth=depth or self.cfg.depth,
            patch_size=self.patch,
            img_size=self.img_size,
            in_chans=self.data.channels,
            num_classes=len(self.data.classes),
        )

    # ----------------------------------------------------------------------------------- work folder
    # weights are fp32 safetensors; a step's JSON record marks it finished
    def save_model(self, model: torch.nn.Module, rel: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if dist.is_main():  # under torchrun rank 0 writes, and every rank waits until it is there
            save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
        dist.barrier()

    def load_vit(self, shape: str, rel: str) -> torch.nn.Module:
        m = build_vit(self.arch(shape))
        m.load_state_dict(load_file(str(self.work / rel)))
        return m.eval()

    def load_tail(self, rel: str) -> ExpertTail:
        t = ExpertTail(self.arch(self.cfg.expert_shape), self.cfg.tail_blocks)
        t.load_state_dict(load_file(str(self.work / rel)))
        return t.eval()

    def info(self, name: str) -> dict | None:
        p = self.work / files.record(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def set_info(self, name: str, info: dict) -> None:
        if dist.is_main():
            (self.work / files.record(name)).write_text(json.dumps(info, indent=2))
        dist.barrier()

    def need(self, step: str) -> dict:
        """An earlier step's record: steps read their inputs from the work folder, never run each other."""
        if (done := self.info(step)) is None:
            raise SystemExit(f"{self.work}: step {step} has not run yet; run `trainer {step}` with the same flags, or `trainer pack`")
        return done

    def report(self) -> PackReport:
        """The report step's typed result, read back from the work folder."""
        return PackReport.model_validate(self.need("report"))

    # ---------------------------------------------------------------------------------- fit, predict
    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        model.to(self.device).eval()
        return predict(model, x, 512, self.device)

    @staticmethod
    def acc(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
        top = logits.topk(k, dim=1).indices
        return round(100.0 * float((top == y[:, None]).any(dim=1).float().mean()), 2)

    def spec(self, epochs: int, lr: float, seed: int | None = None, aug: bool = True, teacher: bool = False) -> FitSpec:
        """A fit's schedule: what every fit of this pipeline shares (batch, weight decay, warm-up,
        clipping, W, the omega schedule, augmentation) with its own epochs, LR and seed; a teacher's
        fit (M_D, M_I) clips by teacher_clip_grad when that is set (Table 6: none for teachers)."""
        cfg = self.cfg
        clip = cfg.teacher_clip_grad if teacher and cfg.teacher_clip_grad >= 0 else cfg.clip_grad
        return FitSpec(
            epochs=epochs,
            batch_size=cfg.batch_size,
            lr=lr,
            weight_decay=cfg.weight_decay,
            warmup_epochs=cfg.warmup_epochs,
            clip=clip,
            max_weight=cfg.max_weight,
            omega_schedule=cfg.omega_schedule,
            aug=self.aug() if aug else None,
            seed=cfg.seed if seed is None else seed,
        )

    def fit(self, jobs: list[Job], x: torch.Tensor, y: torch.Tensor, teacher, spec: FitSpec, name: str, desc: str) -> dict:
        """engine.fit on this run's device and log, checkpointing under ckpt/<name>."""
        return fit(jobs, x, y, teacher, spec, FitEnv(self.device, self.work / files.checkpoints(name), desc, self.log))

    def aug(self) -> dict | None:
        if not self.cfg.augment:
            return None
        fill = -torch.tensor(self.data.mean) / torch.tensor(self.data.std)  # a black pixel, normalised
        return {"pad": max(1, self.data.img_size // 14), "flip": True, "fill": fill}

    # ----------------------------------------------------------------- what several steps read alike
    def new_teacher(self, drop_path_rate: float = 0.0) -> torch.nn.Module:
        """A teacher to train: from --teacher-init's pretrained weights (resized to this run's image
        and patch size, a new head), else from random weights."""
        if not self.cfg.teacher_init:
            return build_vit(self.arch(self.cfg.teacher_shape), drop_path_rate=drop_path_rate)
        from trainer.teacher_init import pretrained_vit

        return pretrained_vit(self.arch(self.cfg.teacher_shape), self.cfg.teacher_init, drop_path_rate)

    def teacher_labels(self) -> torch.Tensor:
        """M_D's hard labels on the training split."""
        return load_file(str(self.work / files.TEACHER_LABELS))["train"]

    def importance_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The labelled training batches that loss-based importance is measured on (fixed, seeded)."""
        cfg = self.cfg
        n = min(len(self.data.y_train), cfg.importance_batches * cfg.batch_size)
        idx = torch.randperm(len(self.data.y_train), generator=torch.Generator().manual_seed(cfg.seed + 7))[:n]
        return [
            (self.data.x_train[idx[i : i + cfg.batch_size]], self.data.y_train[idx[i : i + cfg.batch_size]])
            for i in range(0, n, cfg.batch_size)
        ]

    def experts_of(self) -> tuple[list[str], list[tuple[int, ...]]]:
        subsets = part.expert_list(self.cfg.subsets, self.cfg.k)
        return [expert_key(s) for s in subsets], subsets

    def expert_samples(self) -> torch.Tensor:
        """The training images of the subset teachers and the experts (all, or a seeded choice)."""
        n = len(self.data.y_train)
        m = self.cfg.expert_train_samples
        if m and m < n:
            return torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + 11))[:m]).values
        return torch.arange(n)

    def target_mask(self, subset) -> torch.Tensor:
        p = torch.tensor(self.need("partition")["partition"])
        return torch.isin(p, torch.tensor(list(subset)))

    def expert_teacher_rel(self, key: str) -> str:
        """M_I: the expert's own teacher (per-subset recipe) or the generalist teacher (shared)."""
        return files.subset_teacher(key) if self.cfg.teacher_recipe == "per-subset" else files.TEACHER

    def trunk_blocks(self) -> int:
        if not 1 <= self.cfg.tail_blocks < self.cfg.depth:
            raise SystemExit("--tail-blocks must lie in 1..depth-1")
        return self.cfg.depth - self.cfg.tail_blocks

    def trunk_fn(self, trunk: torch.nn.Module):
        L = self.trunk_blocks()
        return lambda x: trunk_tokens(trunk, x, L)
