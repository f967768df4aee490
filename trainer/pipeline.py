"""The training steps of a model pack and their chaining (`trainer pack`).

Every step reads and writes a work folder (default `runs/<dataset>`): fp32 safetensors, JSON
records, per-fit checkpoints. A step whose outputs exist is skipped, so re-running the same command
after an interruption resumes where it stopped (a fit resumes after its last finished epoch).

Steps:
  teacher   a large generalist (default 6H) trained with cross-entropy on the whole training split.
  prune     pruning of the teacher to the 4H and 3H shapes by loss-based importance, then
            distillation of both (CE(y)/2 + CE(teacher hard label)/2); 3H is the edge generalist,
            4H the shared trunk, the 4H baseline and every expert's initialisation.
  baselines same-size generalists: 4H (from `prune`) and 6H (the teacher when it is 6H, else
            pruned and distilled from it).
  partition superclass grouping, or confusion grouping from the 3H generalist on validation.
  subset-teachers  per-subset recipe: a teacher M_I per expert, fine-tuned progressively.
  experts   full 4H experts pruned from M_I and trained with eq. 1-3 (progressive), with the
            static (constant W) and uniform (weight 1) controls on the same init, data and
            schedule, for several seeds; and compact (tail) experts on the shared 4H trunk.
  report    test-split evaluation, reports (JSON + Markdown) and test logits.
  export    the pack: fp16 safetensors, manifest, reports, logits (size-checked).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from askexpert.datasets import LabelledImages, list_dataset, load_dataset, train_val_split
from askexpert.models import ExpertTail, ViTArch, build_vit, trunk_tokens
from askexpert.routing import expert_key
from trainer import distributed as dist
from trainer import partition as part
from trainer import workfiles as files
from trainer.data import Data
from trainer.engine import FitEnv, FitSpec, Job, fit, predict
from trainer.prune import compute_importance, prune_vit
from trainer.results import PackReport

PACK_FILE_LIMIT = 32 * 2**20
PACK_TOTAL_LIMIT = 128 * 2**20
EXPERT_KINDS = ("progressive", "static", "uniform")  # the method and its two controls
# The steps of `trainer pack` in their order; each reads what earlier ones wrote to the work folder.
STEPS = ("premise", "teacher", "prune", "baselines", "partition", "subset-teachers", "experts", "report")


@dataclass
class Config:
    dataset: str = "fashion-mnist"
    work: str = ""
    out: str = ""
    subsets: int = 4
    k: int = 2
    partition: str = "superclass"  # superclass | paper (Table 7) | confusion
    teacher_recipe: str = "per-subset"  # per-subset (the paper's M_I) | shared
    teacher_shape: str = "6H"
    edge_shape: str = "3H"
    expert_shape: str = "4H"
    baseline_shapes: list[str] = field(default_factory=lambda: ["4H", "6H"])
    head_dim: int = 64  # the paper's DeiT; every shape keeps its head count (4H/16: 4 heads of 16)
    depth: int = 12
    patch_size: int = 0  # 0: chosen from the image size
    img_size: int = 0  # 0: the data's; else every model's input size, images resized per batch
    teacher_init: str = ""  # pretrained ViT weights (safetensors or .pth state dict) for every teacher
    subset_teacher_init: str = "teacher"  # teacher: M_I from M_D | pretrained: from --teacher-init (the paper)
    stream: bool = False  # folder data sets: decode images per batch (DataLoader workers), not all in memory
    tail_blocks: int = 1
    epochs_teacher: int = 30
    epochs_distill: int = 30
    epochs_expert: int = 10
    epochs_subset_teacher: int = 5
    batch_size: int = 256
    lr: float = 1e-3  # the generalist teacher M_D (from scratch)
    distill_lr: float = 5e-4  # the pruned generalists (3H, 4H, 6H)
    subset_teacher_lr: float = 2e-4  # M_I, fine-tuned from M_D
    expert_lr: float = 2e-4  # m_I, pruned from M_I
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5  # linear warm-up of every fit, then cosine (Table 6: 5 of 200 epochs)
    clip_grad: float = 1.0  # gradient-norm clipping of every fit (Table 6: 1.0 for students)
    teacher_clip_grad: float = -1.0  # the teachers' (M_D, M_I) clipping; < 0: clip_grad (Table 6: none, 0)
    max_weight: float = 14.0  # W (the paper's Table 6)
    omega_schedule: str = "step"
    max_train_samples: int = 0
    expert_train_samples: int = 0
    max_test_samples: int = 0  # for smoke tests only: reports then cover part of the test split
    max_val_samples: int = 0  # for smoke tests only
    expert_init: str = "pruned-teacher"  # pruned-teacher (the paper: M_I pruned to 4H) | generalist (the 4H generalist)
    expert_seeds: int = 3  # seeds of every expert and its controls (data order, augmentation)
    busy_experts: int = 0  # >0: only the N busiest experts (validation offloads) get expert_seeds seeds, the rest one
    premise_grid: list[str] = field(default_factory=list)  # "HDxDEPTH[@LR]" settings of the premise sweep (step premise)
    premise_epochs: int = 6
    compact_experts: bool = True  # also train tails on the shared 4H trunk (a serving option)
    tau_tolerance: float = 0.25  # default tau: the lowest whose validation accuracy is within this (pt) of the best
    importance_batches: int = 8
    val_fraction: float = 0.1
    tau: float | None = None  # None: chosen on the validation split (see tau_tolerance)
    augment: bool = True
    device: str = "cpu"
    threads: int = 0
    seed: int = 0
    onnx: str = ""  # export ONNX of the pack into this folder at the end of `pack`
    name: str = ""

    def __post_init__(self) -> None:
        self.work = self.work or f"runs/{self.dataset.replace(':', '-').replace('/', '_')}"
        self.out = self.out or f"packs/{self.dataset.replace(':', '-').replace('/', '_')}"


# ----------------------------------------------------------------------------------------------- data
def to_tensor(d: LabelledImages, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(d.images).copy()).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(mean, dtype=torch.float32)[None, :, None, None]) / torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return x.contiguous(), torch.from_numpy(d.labels.astype(np.int64))


def _subsample(d: LabelledImages, n: int, seed: int) -> LabelledImages:
    """At most `n` images of a split (0: all), a seeded choice kept in order."""
    if not n or n >= len(d):
        return d
    idx = np.sort(np.random.default_rng(seed).permutation(len(d))[:n])
    return LabelledImages(d.images[idx], d.labels[idx], d.classes, d.superclass, d.superclass_names)


def load_data(cfg: Config) -> Data:
    load = list_dataset if cfg.stream else load_dataset  # streamed: file lists, decoded per batch
    full = load(cfg.dataset, "train")
    train, val = train_val_split(full, cfg.val_fraction, cfg.seed)
    train = _subsample(train, cfg.max_train_samples, cfg.seed + 1)
    val = _subsample(val, cfg.max_val_samples, cfg.seed + 3)
    test = _subsample(load(cfg.dataset, "test"), cfg.max_test_samples, cfg.seed + 2)
    if cfg.stream:
        from trainer.streaming import streamed_data

        return streamed_data(cfg, train, val, test)
    pix = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64) / 255.0
    # rounded as written to the manifest, so the runtime's preprocessing is exactly the trainer's
    mean, std = np.round(pix.mean(axis=0), 4), np.round(pix.std(axis=0) + 1e-8, 4)
    splits = (to_tensor(train, mean, std), to_tensor(val, mean, std), to_tensor(test, mean, std))
    return Data.of(splits, full, (mean, std), (train.images.shape[1], train.images.shape[-1]))


def parse_premise(item: str, default_lr: float) -> tuple[int, int, float]:
    """'16x3' -> (16, 3, default_lr); '16x3@2e-3' -> (16, 3, 0.002)."""
    try:
        shape, _, lr = item.partition("@")
        hd, depth = (int(v) for v in shape.lower().split("x"))
        return hd, depth, float(lr) if lr else default_lr
    except ValueError:
        raise SystemExit(f"premise setting {item!r}: expected HEADDIMxDEPTH[@LR], e.g. 16x3 or 16x3@2e-3") from None


def needs(cfg: Config, step: str) -> list[str]:
    """The earlier steps whose records `step` reads."""
    return {
        "prune": ["teacher"],
        "baselines": ["prune"],
        "partition": ["prune"] if cfg.partition == "confusion" else [],  # the 3H's confusions
        "subset-teachers": ["teacher", "prune", "partition"],
        "experts": ["prune", "partition", "subset-teachers"],
        "report": ["baselines", "partition", "experts"],
    }.get(step, [])


def steps_for(cfg: Config, last: str) -> list[str]:
    """`last` and every step it needs (transitively), in the order of STEPS: what `trainer <step>` runs."""
    want, todo = {last}, [last]
    while todo:
        for step in needs(cfg, todo.pop()):
            if step not in want:
                want.add(step)
                todo.append(step)
    return [s for s in STEPS if s in want]


def auto_patch(img_size: int) -> int:
    for p in (16, 8, 7, 4):
        if img_size % p == 0 and img_size // p >= 4:
            return p
    return 1


# --------------------------------------------------------------------------------------------- helpers
class Run:
    """A work folder plus the loaded data and the config; each step is a method."""

    def __init__(self, cfg: Config, log=print) -> None:
        self.cfg = cfg
        self.log = log
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")
        if cfg.device == "cuda" and self.device.type != "cuda":
            raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg)
        self.img_size = cfg.img_size or self.data.img_size
        self.patch = cfg.patch_size or auto_patch(self.img_size)
        self._record_config()

    def _record_config(self) -> None:
        path = self.work / files.CONFIG
        recipe = self.recipe()
        if path.is_file():
            old = json.loads(path.read_text())
            keys = ["dataset", "head_dim", "depth", "patch_size", "img_size", "max_train_samples", "seed", "val_fraction", "teacher_shape"]
            diff = {k: (old.get(k), recipe.get(k)) for k in keys if old.get(k) != recipe.get(k)}
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

    # weights in the work folder are fp32 safetensors; `info` JSON marks a finished step
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

    def run_step(self, step: str) -> dict:
        """One step of STEPS; a finished step returns its record at once."""
        return getattr(self, f"step_{step.replace('-', '_')}")()

    def run_until(self, last: str) -> None:
        """`last` and every step it needs, in the order of STEPS."""
        for step in steps_for(self.cfg, last):
            self.run_step(step)

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

    def _fit(self, jobs: list[Job], x: torch.Tensor, y: torch.Tensor, teacher, spec: FitSpec, name: str, desc: str) -> dict:
        """engine.fit on this run's device and log, checkpointing under ckpt/<name>."""
        return fit(jobs, x, y, teacher, spec, FitEnv(self.device, self.work / files.checkpoints(name), desc, self.log))

    def aug(self) -> dict | None:
        if not self.cfg.augment:
            return None
        fill = -torch.tensor(self.data.mean) / torch.tensor(self.data.std)  # a black pixel, normalised
        return {"pad": max(1, self.data.img_size // 14), "flip": True, "fill": fill}

    # ------------------------------------------------------------------------------------------ steps
    def ladder(self) -> list[str]:
        """The generalist shapes from the edge model up to the teacher, smallest first."""
        cfg = self.cfg
        shapes = {cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes, cfg.teacher_shape}
        return sorted(shapes, key=lambda s: int(s[:-1]))

    def step_premise(self) -> dict:
        """The premise of the method, checked before any expert is trained: a ladder of generalists
        (3H < 4H < 6H < teacher, each step >= 1 pt on the validation split) at each model setting of
        `premise_grid` ("HDxDEPTH[@LR]": head dim, depth, teacher LR), each shape trained from
        scratch with cross-entropy for `premise_epochs`. A setting whose models all saturate at one
        accuracy leaves nothing for a bigger or more specialised model to add. The choice is the
        cheapest setting (fewest ladder parameters) where the ladder holds."""
        cfg = self.cfg
        if (done := self.info("premise")) is not None:
            return done  # also when an earlier `trainer premise` ran it in this work folder
        if not cfg.premise_grid:
            return {}
        results = self.info("premise-fits") or {}
        for item in cfg.premise_grid:
            if item not in results:
                results[item] = self._premise_fit(item)
                self.set_info("premise-fits", results)
        holding = [k for k in cfg.premise_grid if results[k]["ladder_holds"]]
        chosen = (
            min(holding, key=lambda k: (results[k]["ladder_params"], -float(np.mean(list(results[k]["val_top1"].values())))))
            if holding
            else None
        )
        info = {
            "ladder": self.ladder(),
            "epochs": cfg.premise_epochs,
            "rule": "cheapest setting whose ladder steps are all >= 1 pt on validation",
            "settings": results,
            "chosen": chosen,
            "recipe": {"head_dim": cfg.head_dim, "depth": cfg.depth, "lr": cfg.lr},
            "recipe_is_chosen": chosen is not None and (results[chosen]["head_dim"], results[chosen]["depth"]) == (cfg.head_dim, cfg.depth),
        }
        self.set_info("premise", info)
        self.log(f"[premise] chosen: {chosen}; the recipe {'is' if info['recipe_is_chosen'] else 'is NOT'} that setting")
        return info

    def _premise_fit(self, item: str) -> dict:
        """The ladder of one premise setting, trained from scratch together, scored on validation."""
        cfg, d = self.cfg, self.data
        ladder = self.ladder()
        hd, depth, lr = parse_premise(item, cfg.lr)
        torch.manual_seed(cfg.seed)
        jobs = [Job(sh, build_vit(self.arch(sh, head_dim=hd, depth=depth))) for sh in ladder]
        summary = self._fit(jobs, d.x_train, d.y_train, None, self.spec(cfg.premise_epochs, lr), f"premise/{item}", f"premise {item}")
        val = {j.name: self.acc(self.logits(j.model, d.x_val), d.y_val) for j in jobs}
        steps = [round(val[b] - val[a], 2) for a, b in zip(ladder, ladder[1:])]
        self.log(f"[premise] {item}: " + " < ".join(f"{k} {v}%" for k, v in val.items()) + f" (steps {steps})")
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

    def step_teacher(self) -> dict:
        if (done := self.info("teacher")) is not None:
            return done
        cfg = self.cfg
        arch = self.arch(cfg.teacher_shape)
        model = self.new_teacher(drop_path_rate=0.1 if cfg.epochs_teacher >= 20 else 0.0)
        self.log(f"[teacher] {cfg.teacher_shape} depth {cfg.depth} patch {self.patch} on {len(self.data.y_train)} images")
        spec = self.spec(cfg.epochs_teacher, cfg.lr, teacher=True)
        summary = self._fit([Job("teacher", model)], self.data.x_train, self.data.y_train, None, spec, "teacher", "teacher")
        self.save_model(model, files.TEACHER)
        train_logits = self.logits(model, self.data.x_train)
        if dist.is_main():
            save_file({"train": train_logits.argmax(1).contiguous()}, str(self.work / files.TEACHER_LABELS))
        info = {
            "shape": cfg.teacher_shape,
            "arch": arch.to_dict(),
            "fit": summary,
            "val_top1": self.acc(self.logits(model, self.data.x_val), self.data.y_val),
            "train_top1": self.acc(train_logits, self.data.y_train),
        }
        self.set_info("teacher", info)
        self.log(f"[teacher] done: val top-1 {info['val_top1']}%, {summary['wall_s']} s")
        return info

    def new_teacher(self, drop_path_rate: float = 0.0) -> torch.nn.Module:
        """A teacher to train: from --teacher-init's pretrained weights (resized to this run's image
        and patch size, a new head), else from random weights."""
        if not self.cfg.teacher_init:
            return build_vit(self.arch(self.cfg.teacher_shape), drop_path_rate=drop_path_rate)
        from trainer.teacher_init import pretrained_vit

        return pretrained_vit(self.arch(self.cfg.teacher_shape), self.cfg.teacher_init, drop_path_rate)

    def teacher_labels(self) -> torch.Tensor:
        return load_file(str(self.work / files.TEACHER_LABELS))["train"]

    def _importance_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The labelled training batches that loss-based importance is measured on (fixed, seeded)."""
        cfg = self.cfg
        n = min(len(self.data.y_train), cfg.importance_batches * cfg.batch_size)
        idx = torch.randperm(len(self.data.y_train), generator=torch.Generator().manual_seed(cfg.seed + 7))[:n]
        return [
            (self.data.x_train[idx[i : i + cfg.batch_size]], self.data.y_train[idx[i : i + cfg.batch_size]])
            for i in range(0, n, cfg.batch_size)
        ]

    def _prune_from_teacher(self, shapes: list[str], name: str) -> dict:
        """Prune the teacher to each shape and distill all of them together."""
        cfg = self.cfg
        teacher = self.load_vit(cfg.teacher_shape, files.TEACHER)
        src = self.arch(cfg.teacher_shape)
        batches = self._importance_batches()
        n = sum(len(b[1]) for b in batches)
        t0 = time.time()
        imp = compute_importance(teacher.to(self.device), batches)
        teacher.cpu()
        imp_s = round(time.time() - t0, 1)
        jobs, pruned_val = [], {}
        for shape in shapes:
            student = prune_vit(teacher, src, self.arch(shape), imp)
            pruned_val[shape] = self.acc(self.logits(student, self.data.x_val), self.data.y_val)
            self.log(f"[{name}] pruned {cfg.teacher_shape} -> {shape}: val top-1 before distillation {pruned_val[shape]}%")
            jobs.append(Job(f"{shape}", student))
        spec = self.spec(cfg.epochs_distill, cfg.distill_lr)
        summary = self._fit(jobs, self.data.x_train, self.data.y_train, self.teacher_labels(), spec, name, f"distill {'+'.join(shapes)}")
        info = {"fit": summary, "importance_s": imp_s, "importance_samples": n, "models": {}}
        for job in jobs:
            self.save_model(job.model, files.generalist(job.name))
            info["models"][job.name] = {
                "arch": self.arch(job.name).to_dict(),
                "pruned_from": cfg.teacher_shape,
                "val_top1_pruned": pruned_val[job.name],
                "val_top1": self.acc(self.logits(job.model, self.data.x_val), self.data.y_val),
            }
        return info

    def step_prune(self) -> dict:
        if (done := self.info("prune")) is not None:
            return done
        self.need("teacher")
        info = self._prune_from_teacher(self.student_shapes(), "prune")
        self.set_info("prune", info)
        self.log("[prune] done: " + ", ".join(f"{k} val {v['val_top1']}%" for k, v in info["models"].items()))
        return info

    def student_shapes(self) -> list[str]:
        """The generalists pruned from the teacher and distilled together: edge, expert-shaped and
        every baseline that is not the teacher itself."""
        cfg = self.cfg
        shapes = [cfg.edge_shape, cfg.expert_shape, *cfg.baseline_shapes]
        return [s for i, s in enumerate(shapes) if s not in shapes[:i] and s != cfg.teacher_shape]

    def step_baselines(self) -> dict:
        """Same-size generalists for the controls: distilled students (step prune), or the teacher."""
        if (done := self.info("baselines")) is not None:
            return done
        cfg = self.cfg
        have = set(self.need("prune")["models"])
        info: dict = {"models": {}}
        for s in cfg.baseline_shapes:
            if s in have:
                info["models"][s] = {"arch": self.arch(s).to_dict(), "source": "pruned and distilled (step prune)"}
            else:  # the teacher's own shape
                self.save_model(self.load_vit(s, files.TEACHER), files.generalist(s))
                info["models"][s] = {"arch": self.arch(s).to_dict(), "source": "the teacher itself (cross-entropy)"}
        self.set_info("baselines", info)
        return info

    def step_partition(self) -> dict:
        if (done := self.info("partition")) is not None:
            return done
        cfg, d = self.cfg, self.data
        S = cfg.subsets
        if cfg.partition == "superclass":
            if d.superclass is not None:
                p = part.superclass_partition(d.superclass, S)
                names = part.subset_names_for(p, d.classes, d.superclass_names, d.superclass)
                how = f"superclasses grouped into {S} balanced subsets"
            elif cfg.dataset == "fashion-mnist" and S == 4:
                from trainer.export import FASHION_MNIST_PARTITION, FASHION_MNIST_SUBSETS

                p, names = list(FASHION_MNIST_PARTITION), list(FASHION_MNIST_SUBSETS)
                how = "the documented Fashion-MNIST grouping by garment kind (trainer/export.py)"
            else:
                raise SystemExit(f"{cfg.dataset} has no superclasses for S={S}: use --partition confusion")
        elif cfg.partition == "paper":
            if d.superclass is None:
                raise SystemExit(f"{cfg.dataset} has no superclasses: --partition paper is Table 7's CIFAR-100 grouping")
            try:
                p = part.paper_partition(d.superclass, d.superclass_names, S)
            except ValueError as e:
                raise SystemExit(str(e)) from None
            names = part.subset_names_for(p, d.classes, d.superclass_names, d.superclass)
            how = f"the paper's Table 7 superclass lists for S={S}"
        elif cfg.partition == "confusion":
            self.need("prune")
            g = self.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
            p = part.confusion_partition(d.y_val.numpy(), self.logits(g, d.x_val).numpy(), S, cfg.k)
            names = part.subset_names_for(p, d.classes)
            how = f"confusion of the {cfg.edge_shape} generalist on the validation split, balanced, S={S}"
        else:
            raise SystemExit(f"unknown partition {cfg.partition!r}")
        info = {"partition": p, "subset_names": names, "how": how, "experts": [expert_key(c) for c in part.expert_list(S, cfg.k)]}
        if (self.work / files.generalist(cfg.edge_shape)).is_file():
            g = self.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
            info["val_topk_within_one_subset"] = part.topk_within_subset_rate(self.logits(g, d.x_val).numpy(), p, cfg.k)
        self.set_info("partition", info)
        self.log(f"[partition] {how}: {p}")
        return info

    def _expert_samples(self) -> torch.Tensor:
        n = len(self.data.y_train)
        m = self.cfg.expert_train_samples
        if m and m < n:
            return torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + 11))[:m]).values
        return torch.arange(n)

    def trunk_blocks(self) -> int:
        if not 1 <= self.cfg.tail_blocks < self.cfg.depth:
            raise SystemExit("--tail-blocks must lie in 1..depth-1")
        return self.cfg.depth - self.cfg.tail_blocks

    def trunk_fn(self, trunk: torch.nn.Module):
        L = self.trunk_blocks()
        return lambda x: trunk_tokens(trunk, x, L)

    def target_mask(self, subset) -> torch.Tensor:
        p = torch.tensor(self.need("partition")["partition"])
        return torch.isin(p, torch.tensor(list(subset)))

    def experts_of(self) -> tuple[list[str], list[tuple[int, ...]]]:
        subsets = part.expert_list(self.cfg.subsets, self.cfg.k)
        return [expert_key(s) for s in subsets], subsets

    def expert_teacher_rel(self, key: str) -> str:
        """M_I: the expert's own teacher (per-subset recipe) or the generalist teacher (shared)."""
        return files.subset_teacher(key) if self.cfg.teacher_recipe == "per-subset" else files.TEACHER

    @staticmethod
    def expert_rel(kind: str, key: str, seed: int) -> str:
        return files.expert(kind, key, seed)

    def step_subset_teachers(self) -> dict:
        """Per-subset recipe (the paper's): a teacher M_I per expert, fine-tuned from the generalist
        teacher with the progressive schedule (eq. 1-2) on label cross-entropy, on the experts'
        training samples; its hard labels on those (clean) images are cached for the distillation."""
        if (done := self.info("subset-teachers")) is not None:
            return done
        cfg, d = self.cfg, self.data
        self.need("teacher")
        if cfg.teacher_recipe not in ("shared", "per-subset"):
            raise SystemExit(f"unknown teacher recipe {cfg.teacher_recipe!r}")
        info: dict = {"recipe": cfg.teacher_recipe, "models": {}}
        keys, subsets = self.experts_of()
        self.need("prune")
        gen_val = self.logits(self.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape)), d.x_val)
        idx = self._expert_samples()
        x, y = d.x_train[idx], d.y_train[idx]
        part_of = torch.tensor(self.need("partition")["partition"])
        for key, sub in zip(keys, subsets) if cfg.teacher_recipe == "per-subset" else []:
            rel = self.expert_teacher_rel(key)
            if not (self.work / rel).is_file():
                pretrained = cfg.subset_teacher_init == "pretrained" and cfg.teacher_init
                m = self.new_teacher() if pretrained else self.load_vit(cfg.teacher_shape, files.TEACHER)
                job = Job(f"teacher-{key}", m, "progressive", self.target_mask(sub), use_teacher=False)
                spec = self.spec(cfg.epochs_subset_teacher, cfg.subset_teacher_lr, teacher=True)
                self._fit([job], x, y, None, spec, f"subset-teacher-{key}", f"teacher M_{key}")
                self.save_model(m, rel)
                labels = {"train": self.logits(m, x).argmax(1).contiguous()}
                if dist.is_main():
                    save_file(labels, str(self.work / files.subset_teacher_labels(key)))
            m = self.load_vit(cfg.teacher_shape, rel)
            lv = self.logits(m, d.x_val)
            on_target = torch.isin(part_of[d.y_val], torch.tensor(list(sub)))
            row = {
                "val_top1": self.acc(lv, d.y_val),
                "val_target_top1": self.acc(lv[on_target], d.y_val[on_target]),
                "generalist_val_target_top1": self.acc(gen_val[on_target], d.y_val[on_target]),
            }
            # the premise of distilling m_I from M_I: M_I beats the expert-shaped generalist on D_I
            row["margin_over_generalist_pt"] = round(row["val_target_top1"] - row["generalist_val_target_top1"], 2)
            info["models"][key] = row
            self.log(
                f"[subset teachers] M_{key}: val {row['val_top1']}%, on target {row['val_target_top1']}% "
                f"({row['margin_over_generalist_pt']:+.2f} pt over the {cfg.expert_shape} generalist)"
            )
        self.set_info("subset-teachers", info)
        return info

    def expert_teacher_labels(self, key: str) -> torch.Tensor:
        """M_I's hard labels for the experts' training samples (`_expert_samples` order)."""
        if self.cfg.teacher_recipe == "shared":
            return self.teacher_labels()[self._expert_samples()]
        return load_file(str(self.work / files.subset_teacher_labels(key)))["train"]

    def expert_init(self, key: str) -> torch.nn.Module:
        """The paper's init of m_I: M_I pruned to the expert shape by loss-based importance (cached);
        or, for small budgets, the expert-shaped generalist (the generalist teacher pruned and distilled)."""
        cfg = self.cfg
        if cfg.expert_init == "generalist":
            return self.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape))
        if cfg.expert_init != "pruned-teacher":
            raise SystemExit(f"unknown expert init {cfg.expert_init!r}")
        rel = files.expert_init(key)
        if not (self.work / rel).is_file():
            teacher = self.load_vit(cfg.teacher_shape, self.expert_teacher_rel(key)).to(self.device)
            imp = compute_importance(teacher, self._importance_batches())
            teacher.cpu()
            self.save_model(prune_vit(teacher, self.arch(cfg.teacher_shape), self.arch(cfg.expert_shape), imp), rel)
        return self.load_vit(cfg.expert_shape, rel)

    def expert_seeds(self, busy: dict[str, float]) -> dict[str, list[int]]:
        """Seeds per expert: `expert_seeds` for every expert, or, with `busy_experts` N, for the N
        experts that most validation frames are offloaded to (3H at tau 0.9) and one seed for the
        rest, where controls over seeds matter least for the system. `busy`: `offload_share()`."""
        cfg = self.cfg
        keys, _ = self.experts_of()
        if not cfg.busy_experts or cfg.busy_experts >= len(keys):
            return {k: list(range(cfg.expert_seeds)) for k in keys}
        top = sorted(keys, key=lambda k: (-busy.get(k, 0.0), keys.index(k)))[: cfg.busy_experts]
        return {k: list(range(cfg.expert_seeds if k in top else 1)) for k in keys}

    def offload_share(self, tau: float = 0.9) -> dict[str, float]:
        """Share (%) of the validation frames offloaded to each expert by the edge generalist at tau."""
        from askexpert.routing import decide

        cfg = self.cfg
        edge = self.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
        dec = decide(self.logits(edge, self.data.x_val).numpy(), self.need("partition")["partition"], cfg.k)
        keys, counts = np.unique(dec.expert[dec.offloaded(tau)].astype(str), return_counts=True)
        return {str(k): round(100.0 * int(c) / len(dec.conf), 2) for k, c in zip(keys, counts)}

    def step_experts(self) -> dict:
        """Full experts m_I (every block trainable, pruned from M_I) with the progressive schedule and
        its two controls on the same init, data, teacher labels, epochs and LR schedule: static
        (constant W) and uniform (weight 1), for each of the expert's seeds (data order and
        augmentation). Plus, optionally, compact experts: tails on the frozen 4H generalist trunk."""
        if (done := self.info("experts")) is not None:
            return done
        cfg, d = self.cfg, self.data
        self.need("prune")
        self.need("subset-teachers")
        keys, subsets = self.experts_of()
        idx = self._expert_samples()
        x, y = d.x_train[idx], d.y_train[idx]
        fits = self.info("expert-fits") or {}
        share = self.offload_share()
        seeds = self.expert_seeds(share)
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
            init = self.expert_init(key)
            info["init_val_top1"][key] = self.acc(self.logits(init, d.x_val), d.y_val)
            ty = self.expert_teacher_labels(key)
            for s in seeds[key]:
                if all((self.work / self.expert_rel(kind, key, s)).is_file() for kind in EXPERT_KINDS):
                    continue
                jobs = [Job(kind, copy.deepcopy(init), kind, self.target_mask(sub)) for kind in EXPERT_KINDS]
                spec = self.spec(cfg.epochs_expert, cfg.expert_lr, seed=cfg.seed + 1000 * s)
                desc = f"expert {key} seed {s} ({'+'.join(EXPERT_KINDS)})"
                fits[f"{key}/seed{s}"] = self._fit(jobs, x, y, ty, spec, f"experts/{key}/seed{s}", desc)
                for j in jobs:
                    self.save_model(j.model, self.expert_rel(j.name, key, s))
                self.set_info("expert-fits", fits)
        info["fits"] = fits
        info["wall_s"] = round(sum(f["wall_s"] for f in fits.values()), 1)
        if cfg.compact_experts:
            info["compact"] = self._compact_experts(keys, subsets, x, y)
        self.set_info("experts", info)
        return info

    def _compact_experts(self, keys, subsets, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Tails (the last --tail-blocks blocks, norm, head) on the frozen 4H generalist trunk, trained
        with the progressive schedule from the same teacher labels; the trunk's tokens are cached."""
        cfg = self.cfg
        base = self.load_vit(cfg.expert_shape, files.generalist(cfg.expert_shape))
        arch = self.arch(cfg.expert_shape)
        t0 = time.time()
        trunk = as_fp16(base).to(self.device)  # the trunk as stored in the pack
        tok_dtype = torch.float16 if self.device.type == "cpu" else torch.float32
        tokens = predict(self.trunk_fn(trunk), x, 512, self.device, out_dtype=tok_dtype)
        jobs = [
            Job(f"compact-{key}", ExpertTail.from_vit(base, arch, cfg.tail_blocks), "progressive", self.target_mask(sub))
            for key, sub in zip(keys, subsets)
        ]
        teach = {j.name: self.expert_teacher_labels(j.name.split("-", 1)[1]) for j in jobs}
        spec = self.spec(cfg.epochs_expert, cfg.expert_lr, aug=False)
        summary = self._fit(jobs, tokens, y, teach, spec, "compact", f"{len(jobs)} compact (tail) experts")
        for j in jobs:
            self.save_model(j.model, files.compact_expert(j.name.split("-", 1)[1]))
        return {"tail_blocks": cfg.tail_blocks, "trunk_blocks": self.trunk_blocks(), "fit": summary, "wall_s": round(time.time() - t0, 1)}

    # ---------------------------------------------------------------------------------------- evaluate
    def step_report(self) -> PackReport:
        """Test-split logits of every model (fp16-rounded weights, as in the pack), validation logits
        for the choice of tau, and the tables and claims of `trainer.report`."""
        if (done := self.info("report")) is not None and (self.work / files.TEST_LOGITS).is_file():
            return PackReport.model_validate(done)
        from trainer.report import Evaluation, build_report

        d = self.data
        self.need("baselines")
        einfo = self.need("experts")
        test, val = self._generalist_logits(einfo["keys"])
        seeds = self._expert_logits(einfo, val)
        if "compact" in einfo:
            test |= self._compact_logits(einfo["keys"])
        np_test = {k: v.numpy().astype(np.float32) for k, v in test.items()} | seeds[0]
        np_val = {k: v.numpy().astype(np.float32) for k, v in val.items()}
        rep = build_report(self, Evaluation(np_test, d.y_test.numpy(), seeds, np_val, d.y_val.numpy()))
        (self.work / files.TEST_LOGITS).parent.mkdir(exist_ok=True)
        if dist.is_main():
            np.savez_compressed(
                self.work / files.TEST_LOGITS, labels=d.y_test.numpy(), **{k: v.astype(np.float16) for k, v in np_test.items()}
            )
        self.set_info("report", rep.to_json())
        return rep

    def report(self) -> PackReport:
        """The report step's typed result, read back from the work folder."""
        return PackReport.model_validate(self.need("report"))

    def _generalist_logits(self, keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Test and validation logits of the edge model, the baselines, the teacher and (test only)
        the subset teachers, with fp16-rounded weights as in the pack."""
        cfg, d = self.cfg, self.data
        gens = {f"generalist-{cfg.edge_shape}": self.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))}
        for s in cfg.baseline_shapes:
            gens[f"baseline-{s}"] = self.load_vit(s, files.generalist(s))
        if cfg.teacher_shape not in cfg.baseline_shapes:  # else the baseline of that shape is the teacher
            gens[f"teacher-{cfg.teacher_shape}"] = self.load_vit(cfg.teacher_shape, files.TEACHER)
        if cfg.teacher_recipe == "per-subset":
            for key in keys:
                gens[f"subset-teacher-{key}"] = self.load_vit(cfg.teacher_shape, self.expert_teacher_rel(key))
        test: dict[str, torch.Tensor] = {}
        val: dict[str, torch.Tensor] = {}
        for name, m in gens.items():
            m16 = as_fp16(m)
            test[name] = self.logits(m16, d.x_test)
            if not name.startswith("subset-teacher-"):
                val[name] = self.logits(m16, d.x_val)
        return test, val

    def _expert_logits(self, einfo: dict, val: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """Per seed, every expert's test logits; an expert trained with fewer seeds (busy_experts)
        stands in with its seed 0, and the report says which experts vary. Seed 0's progressive
        experts' validation logits go into `val` (for the choice of tau)."""
        cfg, d = self.cfg, self.data
        seeds: list[dict[str, np.ndarray]] = []
        per_expert = einfo.get("seeds_per_expert") or {k: einfo["seeds"] for k in einfo["keys"]}
        for s in einfo["seeds"]:
            per: dict[str, np.ndarray] = {}
            for kind in EXPERT_KINDS:
                for key in einfo["keys"]:
                    if s not in per_expert[key]:
                        per[f"{kind}-{key}"] = seeds[0][f"{kind}-{key}"]
                        continue
                    m = as_fp16(self.load_vit(cfg.expert_shape, self.expert_rel(kind, key, s)))
                    per[f"{kind}-{key}"] = self.logits(m, d.x_test).numpy()
                    if s == 0 and kind == "progressive":
                        val[f"{kind}-{key}"] = self.logits(m, d.x_val)
            seeds.append(per)
        return seeds

    def _compact_logits(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Test logits of the compact experts on the shared (fp16-rounded) trunk's tokens."""
        trunk = as_fp16(self.load_vit(self.cfg.expert_shape, files.generalist(self.cfg.expert_shape))).to(self.device)
        tokens = predict(self.trunk_fn(trunk), self.data.x_test, 512, self.device)
        out = {}
        for key in keys:
            tail = as_fp16(self.load_tail(files.compact_expert(key))).to(self.device)
            out[f"compact-{key}"] = predict(tail, tokens, 512, self.device)
        return out


def as_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with its weights rounded to fp16, as stored in the pack, computing in fp32."""
    return copy.deepcopy(model).half().float().eval()
