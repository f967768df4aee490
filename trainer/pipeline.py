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

from askexpert.datasets import LabelledImages, load_dataset, train_val_split
from askexpert.models import ExpertTail, ViTArch, build_vit, trunk_tokens
from askexpert.routing import expert_key
from trainer import partition as part
from trainer.engine import Job, fit, predict
from trainer.prune import compute_importance, prune_vit

PACK_FILE_LIMIT = 32 * 2**20
PACK_TOTAL_LIMIT = 128 * 2**20
EXPERT_KINDS = ("progressive", "static", "uniform")  # the method and its two controls


@dataclass
class Config:
    dataset: str = "fashion-mnist"
    work: str = ""
    out: str = ""
    subsets: int = 4
    k: int = 2
    partition: str = "superclass"  # superclass | confusion
    teacher_recipe: str = "per-subset"  # per-subset (the paper's M_I) | shared
    teacher_shape: str = "6H"
    edge_shape: str = "3H"
    expert_shape: str = "4H"
    baseline_shapes: list[str] = field(default_factory=lambda: ["4H", "6H"])
    depth: int = 12
    patch_size: int = 0  # 0: chosen from the image size
    tail_blocks: int = 1
    epochs_teacher: int = 30
    epochs_distill: int = 30
    epochs_expert: int = 10
    epochs_subset_teacher: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    distill_lr: float = 5e-4
    expert_lr: float = 2e-4
    weight_decay: float = 0.05
    max_weight: float = 14.0  # W (the paper's Table 6)
    omega_schedule: str = "step"
    max_train_samples: int = 0
    expert_train_samples: int = 0
    max_test_samples: int = 0  # for smoke tests only: reports then cover part of the test split
    max_val_samples: int = 0  # for smoke tests only
    expert_init: str = "pruned-teacher"  # pruned-teacher (the paper: M_I pruned to 4H) | generalist (the 4H generalist)
    expert_seeds: int = 3  # seeds of every expert and its controls (data order, augmentation)
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
@dataclass
class Data:
    classes: list[str]
    superclass: list[int] | None
    superclass_names: list[str]
    mean: list[float]
    std: list[float]
    img_size: int
    channels: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _to_tensor(d: LabelledImages, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(d.images).copy()).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(mean, dtype=torch.float32)[None, :, None, None]) / torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return x.contiguous(), torch.from_numpy(d.labels.astype(np.int64))


def load_data(cfg: Config) -> Data:
    full = load_dataset(cfg.dataset, "train")
    test = load_dataset(cfg.dataset, "test")
    train, val = train_val_split(full, cfg.val_fraction, cfg.seed)
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        idx = np.sort(np.random.default_rng(cfg.seed + 1).permutation(len(train))[: cfg.max_train_samples])
        train = LabelledImages(train.images[idx], train.labels[idx], train.classes, train.superclass, train.superclass_names)
    if cfg.max_val_samples and cfg.max_val_samples < len(val):
        idx = np.sort(np.random.default_rng(cfg.seed + 3).permutation(len(val))[: cfg.max_val_samples])
        val = LabelledImages(val.images[idx], val.labels[idx], val.classes, val.superclass, val.superclass_names)
    if cfg.max_test_samples and cfg.max_test_samples < len(test):
        idx = np.sort(np.random.default_rng(cfg.seed + 2).permutation(len(test))[: cfg.max_test_samples])
        test = LabelledImages(test.images[idx], test.labels[idx], test.classes, test.superclass, test.superclass_names)
    pix = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64) / 255.0
    # rounded as written to the manifest, so the runtime's preprocessing is exactly the trainer's
    mean, std = np.round(pix.mean(axis=0), 4), np.round(pix.std(axis=0) + 1e-8, 4)
    xtr, ytr = _to_tensor(train, mean, std)
    xva, yva = _to_tensor(val, mean, std)
    xte, yte = _to_tensor(test, mean, std)
    return Data(
        classes=list(full.classes),
        superclass=None if full.superclass is None else [int(s) for s in full.superclass],
        superclass_names=list(full.superclass_names),
        mean=[round(float(m), 4) for m in mean],
        std=[round(float(s), 4) for s in std],
        img_size=int(train.images.shape[1]),
        channels=int(train.images.shape[-1]),
        x_train=xtr,
        y_train=ytr,
        x_val=xva,
        y_val=yva,
        x_test=xte,
        y_test=yte,
    )


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
        self.patch = cfg.patch_size or auto_patch(self.data.img_size)
        self._record_config()

    def _record_config(self) -> None:
        path = self.work / "config.json"
        recipe = self.recipe()
        if path.is_file():
            old = json.loads(path.read_text())
            keys = ["dataset", "depth", "patch_size", "max_train_samples", "seed", "val_fraction", "teacher_shape"]
            diff = {k: (old.get(k), recipe.get(k)) for k in keys if old.get(k) != recipe.get(k)}
            if diff:
                raise SystemExit(f"{self.work} was trained with other settings {diff}: use another --work or delete it")
        path.write_text(json.dumps(recipe, indent=2))

    def recipe(self) -> dict:
        d = asdict(self.cfg)
        d["patch_size"] = self.patch
        return d

    def arch(self, shape: str) -> ViTArch:
        return ViTArch.from_shape(
            shape,
            depth=self.cfg.depth,
            patch_size=self.patch,
            img_size=self.data.img_size,
            in_chans=self.data.channels,
            num_classes=len(self.data.classes),
        )

    # weights in the work folder are fp32 safetensors; `info` JSON marks a finished step
    def save_model(self, model: torch.nn.Module, rel: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))

    def load_vit(self, shape: str, rel: str) -> torch.nn.Module:
        m = build_vit(self.arch(shape))
        m.load_state_dict(load_file(str(self.work / rel)))
        return m.eval()

    def load_tail(self, rel: str) -> ExpertTail:
        t = ExpertTail(self.arch(self.cfg.expert_shape), self.cfg.tail_blocks)
        t.load_state_dict(load_file(str(self.work / rel)))
        return t.eval()

    def info(self, name: str) -> dict | None:
        p = self.work / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def set_info(self, name: str, info: dict) -> None:
        (self.work / f"{name}.json").write_text(json.dumps(info, indent=2))

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        model.to(self.device).eval()
        return predict(model, x, 512, self.device)

    @staticmethod
    def acc(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
        top = logits.topk(k, dim=1).indices
        return round(100.0 * float((top == y[:, None]).any(dim=1).float().mean()), 2)

    def _fit(self, *args, **kw):
        """engine.fit with what every fit of this pipeline shares: weight decay, device, log."""
        return fit(*args, weight_decay=self.cfg.weight_decay, device=self.device, log=self.log, **kw)

    def aug(self) -> dict | None:
        if not self.cfg.augment:
            return None
        fill = -torch.tensor(self.data.mean) / torch.tensor(self.data.std)  # a black pixel, normalised
        return {"pad": max(1, self.data.img_size // 14), "flip": True, "fill": fill}

    # ------------------------------------------------------------------------------------------ steps
    def step_teacher(self) -> dict:
        if (done := self.info("teacher")) is not None:
            return done
        cfg = self.cfg
        arch = self.arch(cfg.teacher_shape)
        model = build_vit(arch, drop_path_rate=0.1 if cfg.epochs_teacher >= 20 else 0.0)
        self.log(f"[teacher] {cfg.teacher_shape} depth {cfg.depth} patch {self.patch} on {len(self.data.y_train)} images")
        summary = self._fit(
            [Job("teacher", model)],
            self.data.x_train,
            self.data.y_train,
            None,
            epochs=cfg.epochs_teacher,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            aug=self.aug(),
            ckpt_dir=self.work / "ckpt/teacher",
            desc="teacher",
            seed=cfg.seed,
        )
        self.save_model(model, "teacher.safetensors")
        train_logits = self.logits(model, self.data.x_train)
        save_file({"train": train_logits.argmax(1).contiguous()}, str(self.work / "teacher-labels.safetensors"))
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

    def teacher_labels(self) -> torch.Tensor:
        return load_file(str(self.work / "teacher-labels.safetensors"))["train"]

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
        teacher = self.load_vit(cfg.teacher_shape, "teacher.safetensors")
        src = self.arch(cfg.teacher_shape)
        batches = self._importance_batches()
        n = sum(len(b[1]) for b in batches)
        t0 = time.time()
        imp = compute_importance(teacher.to(self.device), batches)
        teacher.cpu()
        imp_s = round(time.time() - t0, 1)
        jobs = []
        for shape in shapes:
            student = prune_vit(teacher, src, self.arch(shape), imp)
            pruned_val = self.acc(self.logits(student, self.data.x_val), self.data.y_val)
            self.log(f"[{name}] pruned {cfg.teacher_shape} -> {shape}: val top-1 before distillation {pruned_val}%")
            jobs.append(Job(f"{shape}", student))
            jobs[-1].pruned_val = pruned_val  # type: ignore[attr-defined]
        summary = self._fit(
            jobs,
            self.data.x_train,
            self.data.y_train,
            self.teacher_labels(),
            epochs=cfg.epochs_distill,
            batch_size=cfg.batch_size,
            lr=cfg.distill_lr,
            aug=self.aug(),
            ckpt_dir=self.work / f"ckpt/{name}",
            desc=f"distill {'+'.join(shapes)}",
            seed=cfg.seed,
        )
        info = {"fit": summary, "importance_s": imp_s, "importance_samples": n, "models": {}}
        for job in jobs:
            self.save_model(job.model, f"generalist-{job.name}.safetensors")
            info["models"][job.name] = {
                "arch": self.arch(job.name).to_dict(),
                "pruned_from": cfg.teacher_shape,
                "val_top1_pruned": job.pruned_val,  # type: ignore[attr-defined]
                "val_top1": self.acc(self.logits(job.model, self.data.x_val), self.data.y_val),
            }
        return info

    def step_prune(self) -> dict:
        if (done := self.info("prune")) is not None:
            return done
        self.step_teacher()
        shapes = [self.cfg.edge_shape] + ([self.cfg.expert_shape] if self.cfg.expert_shape != self.cfg.edge_shape else [])
        info = self._prune_from_teacher(shapes, "prune")
        self.set_info("prune", info)
        self.log("[prune] done: " + ", ".join(f"{k} val {v['val_top1']}%" for k, v in info["models"].items()))
        return info

    def step_baselines(self) -> dict:
        if (done := self.info("baselines")) is not None:
            return done
        self.step_prune()
        cfg = self.cfg
        have = set(self.step_prune()["models"])
        info: dict = {"models": {}}
        need = [s for s in cfg.baseline_shapes if s not in have and s != cfg.teacher_shape]
        if need:
            sub = self._prune_from_teacher(need, "baselines")
            info["fit"] = sub["fit"]
            info["models"].update(sub["models"])
        for s in cfg.baseline_shapes:
            if s == cfg.teacher_shape and s not in have:
                self.save_model(self.load_vit(s, "teacher.safetensors"), f"generalist-{s}.safetensors")
                info["models"][s] = {"arch": self.arch(s).to_dict(), "source": "the teacher itself (cross-entropy)"}
            elif s in have:
                info["models"][s] = {"arch": self.arch(s).to_dict(), "source": "pruned and distilled (step prune)"}
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
        elif cfg.partition == "confusion":
            self.step_prune()
            g = self.load_vit(cfg.edge_shape, f"generalist-{cfg.edge_shape}.safetensors")
            p = part.confusion_partition(d.y_val.numpy(), self.logits(g, d.x_val).numpy(), S, cfg.k)
            names = part.subset_names_for(p, d.classes)
            how = f"confusion of the {cfg.edge_shape} generalist on the validation split, balanced, S={S}"
        else:
            raise SystemExit(f"unknown partition {cfg.partition!r}")
        info = {"partition": p, "subset_names": names, "how": how, "experts": [expert_key(c) for c in part.expert_list(S, cfg.k)]}
        if (self.work / f"generalist-{cfg.edge_shape}.safetensors").is_file():
            g = self.load_vit(cfg.edge_shape, f"generalist-{cfg.edge_shape}.safetensors")
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
        p = torch.tensor(self.step_partition()["partition"])
        return torch.isin(p, torch.tensor(list(subset)))

    def experts_of(self) -> tuple[list[str], list[tuple[int, ...]]]:
        subsets = part.expert_list(self.cfg.subsets, self.cfg.k)
        return [expert_key(s) for s in subsets], subsets

    def expert_teacher_rel(self, key: str) -> str:
        """M_I: the expert's own teacher (per-subset recipe) or the generalist teacher (shared)."""
        return f"subset-teachers/teacher-{key}.safetensors" if self.cfg.teacher_recipe == "per-subset" else "teacher.safetensors"

    @staticmethod
    def expert_rel(kind: str, key: str, seed: int) -> str:
        return f"experts/{kind}/seed{seed}/expert-{key}.safetensors"

    def step_subset_teachers(self) -> dict:
        """Per-subset recipe (the paper's): a teacher M_I per expert, fine-tuned from the generalist
        teacher with the progressive schedule (eq. 1-2) on label cross-entropy, on the experts'
        training samples; its hard labels on those (clean) images are cached for the distillation."""
        if (done := self.info("subset-teachers")) is not None:
            return done
        cfg, d = self.cfg, self.data
        self.step_teacher()
        if cfg.teacher_recipe not in ("shared", "per-subset"):
            raise SystemExit(f"unknown teacher recipe {cfg.teacher_recipe!r}")
        info: dict = {"recipe": cfg.teacher_recipe, "models": {}}
        keys, subsets = self.experts_of()
        idx = self._expert_samples()
        x, y = d.x_train[idx], d.y_train[idx]
        part_of = torch.tensor(self.step_partition()["partition"])
        for key, sub in zip(keys, subsets) if cfg.teacher_recipe == "per-subset" else []:
            rel = self.expert_teacher_rel(key)
            if not (self.work / rel).is_file():
                m = self.load_vit(cfg.teacher_shape, "teacher.safetensors")
                self._fit(
                    [Job(f"teacher-{key}", m, "progressive", self.target_mask(sub), use_teacher=False)],
                    x,
                    y,
                    None,
                    epochs=cfg.epochs_subset_teacher,
                    batch_size=cfg.batch_size,
                    lr=cfg.expert_lr,
                    max_weight=cfg.max_weight,
                    omega_schedule=cfg.omega_schedule,
                    aug=self.aug(),
                    ckpt_dir=self.work / f"ckpt/subset-teacher-{key}",
                    desc=f"teacher M_{key}",
                    seed=cfg.seed,
                )
                self.save_model(m, rel)
                save_file({"train": self.logits(m, x).argmax(1).contiguous()}, str(self.work / f"subset-teachers/labels-{key}.safetensors"))
            m = self.load_vit(cfg.teacher_shape, rel)
            lv = self.logits(m, d.x_val)
            on_target = torch.isin(part_of[d.y_val], torch.tensor(list(sub)))
            info["models"][key] = {"val_top1": self.acc(lv, d.y_val), "val_target_top1": self.acc(lv[on_target], d.y_val[on_target])}
            self.log(
                f"[subset teachers] M_{key}: val {info['models'][key]['val_top1']}%, on target {info['models'][key]['val_target_top1']}%"
            )
        self.set_info("subset-teachers", info)
        return info

    def expert_teacher_labels(self, key: str) -> torch.Tensor:
        """M_I's hard labels for the experts' training samples (`_expert_samples` order)."""
        if self.cfg.teacher_recipe == "shared":
            return self.teacher_labels()[self._expert_samples()]
        return load_file(str(self.work / f"subset-teachers/labels-{key}.safetensors"))["train"]

    def expert_init(self, key: str) -> torch.nn.Module:
        """The paper's init of m_I: M_I pruned to the expert shape by loss-based importance (cached);
        or, for small budgets, the expert-shaped generalist (the generalist teacher pruned and distilled)."""
        cfg = self.cfg
        if cfg.expert_init == "generalist":
            return self.load_vit(cfg.expert_shape, f"generalist-{cfg.expert_shape}.safetensors")
        if cfg.expert_init != "pruned-teacher":
            raise SystemExit(f"unknown expert init {cfg.expert_init!r}")
        rel = f"experts/init/expert-{key}.safetensors"
        if not (self.work / rel).is_file():
            teacher = self.load_vit(cfg.teacher_shape, self.expert_teacher_rel(key)).to(self.device)
            imp = compute_importance(teacher, self._importance_batches())
            teacher.cpu()
            self.save_model(prune_vit(teacher, self.arch(cfg.teacher_shape), self.arch(cfg.expert_shape), imp), rel)
        return self.load_vit(cfg.expert_shape, rel)

    def step_experts(self) -> dict:
        """Full experts m_I (every block trainable, pruned from M_I) with the progressive schedule and
        its two controls on the same init, data, teacher labels, epochs and LR schedule: static
        (constant W) and uniform (weight 1), for each of `expert_seeds` seeds (data order and
        augmentation). Plus, optionally, compact experts: tails on the frozen 4H generalist trunk."""
        if (done := self.info("experts")) is not None:
            return done
        cfg, d = self.cfg, self.data
        self.step_prune()
        self.step_subset_teachers()
        keys, subsets = self.experts_of()
        idx = self._expert_samples()
        x, y = d.x_train[idx], d.y_train[idx]
        fits = self.info("expert-fits") or {}
        info: dict = {
            "keys": keys,
            "samples": len(idx),
            "teacher_recipe": cfg.teacher_recipe,
            "kinds": list(EXPERT_KINDS),
            "seeds": list(range(cfg.expert_seeds)),
            "init": (f"M_I pruned to {cfg.expert_shape}" if cfg.expert_init == "pruned-teacher" else f"the {cfg.expert_shape} generalist"),
            "init_val_top1": {},
        }
        for key, sub in zip(keys, subsets):
            init = self.expert_init(key)
            info["init_val_top1"][key] = self.acc(self.logits(init, d.x_val), d.y_val)
            ty = self.expert_teacher_labels(key)
            for s in range(cfg.expert_seeds):
                if all((self.work / self.expert_rel(kind, key, s)).is_file() for kind in EXPERT_KINDS):
                    continue
                jobs = [Job(kind, copy.deepcopy(init), kind, self.target_mask(sub)) for kind in EXPERT_KINDS]
                fits[f"{key}/seed{s}"] = self._fit(
                    jobs,
                    x,
                    y,
                    ty,
                    epochs=cfg.epochs_expert,
                    batch_size=cfg.batch_size,
                    lr=cfg.expert_lr,
                    max_weight=cfg.max_weight,
                    omega_schedule=cfg.omega_schedule,
                    aug=self.aug(),
                    ckpt_dir=self.work / f"ckpt/experts/{key}/seed{s}",
                    desc=f"expert {key} seed {s} ({'+'.join(EXPERT_KINDS)})",
                    seed=cfg.seed + 1000 * s,
                )
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
        base = self.load_vit(cfg.expert_shape, f"generalist-{cfg.expert_shape}.safetensors")
        arch = self.arch(cfg.expert_shape)
        t0 = time.time()
        trunk = copy.deepcopy(base).half().float().eval().to(self.device)  # the trunk as stored in the pack (fp16)
        tok_dtype = torch.float16 if self.device.type == "cpu" else torch.float32
        tokens = predict(self.trunk_fn(trunk), x, 512, self.device, out_dtype=tok_dtype)
        jobs = [
            Job(f"compact-{key}", ExpertTail.from_vit(base, arch, cfg.tail_blocks), "progressive", self.target_mask(sub))
            for key, sub in zip(keys, subsets)
        ]
        teach = {j.name: self.expert_teacher_labels(j.name.split("-", 1)[1]) for j in jobs}
        summary = self._fit(
            jobs,
            tokens,
            y,
            teach,
            epochs=cfg.epochs_expert,
            batch_size=cfg.batch_size,
            lr=cfg.expert_lr,
            max_weight=cfg.max_weight,
            omega_schedule=cfg.omega_schedule,
            aug=None,
            ckpt_dir=self.work / "ckpt/compact",
            desc=f"{len(jobs)} compact (tail) experts",
            seed=cfg.seed,
        )
        for j in jobs:
            self.save_model(j.model, f"experts/compact/expert-{j.name.split('-', 1)[1]}.safetensors")
        return {"tail_blocks": cfg.tail_blocks, "trunk_blocks": self.trunk_blocks(), "fit": summary, "wall_s": round(time.time() - t0, 1)}

    # ---------------------------------------------------------------------------------------- evaluate
    def step_report(self) -> dict:
        """Test-split logits of every model (fp16-rounded weights, as in the pack), validation logits
        for the choice of tau, and the tables and claims of `trainer.report`."""
        if (done := self.info("report")) is not None and (self.work / "eval/logits-test-all.npz").is_file():
            return done
        from trainer.report import build_report

        cfg, d = self.cfg, self.data
        self.step_baselines()
        einfo = self.step_experts()
        pinfo = self.step_partition()

        def r16(m):
            return copy.deepcopy(m).half().float().eval()

        test: dict[str, torch.Tensor] = {}
        val: dict[str, torch.Tensor] = {}
        gens = {f"generalist-{cfg.edge_shape}": self.load_vit(cfg.edge_shape, f"generalist-{cfg.edge_shape}.safetensors")}
        for s in cfg.baseline_shapes:
            gens[f"baseline-{s}"] = self.load_vit(s, f"generalist-{s}.safetensors")
        if cfg.teacher_shape not in cfg.baseline_shapes:  # else the baseline of that shape is the teacher
            gens[f"teacher-{cfg.teacher_shape}"] = self.load_vit(cfg.teacher_shape, "teacher.safetensors")
        if cfg.teacher_recipe == "per-subset":
            for key in einfo["keys"]:
                gens[f"subset-teacher-{key}"] = self.load_vit(cfg.teacher_shape, self.expert_teacher_rel(key))
        for name, m in gens.items():
            m16 = r16(m)
            test[name] = self.logits(m16, d.x_test)
            if not name.startswith("subset-teacher-"):
                val[name] = self.logits(m16, d.x_val)
        seeds: list[dict[str, np.ndarray]] = []
        for s in einfo["seeds"]:
            per: dict[str, np.ndarray] = {}
            for kind in EXPERT_KINDS:
                for key in einfo["keys"]:
                    m = r16(self.load_vit(cfg.expert_shape, self.expert_rel(kind, key, s)))
                    per[f"{kind}-{key}"] = self.logits(m, d.x_test).numpy()
                    if s == 0 and kind == "progressive":
                        val[f"{kind}-{key}"] = self.logits(m, d.x_val)
            seeds.append(per)
        if "compact" in einfo:
            trunk = r16(self.load_vit(cfg.expert_shape, f"generalist-{cfg.expert_shape}.safetensors")).to(self.device)
            tokens = predict(self.trunk_fn(trunk), d.x_test, 512, self.device)
            for key in einfo["keys"]:
                tail = r16(self.load_tail(f"experts/compact/expert-{key}.safetensors")).to(self.device)
                test[f"compact-{key}"] = predict(tail, tokens, 512, self.device)
        np_test = {k: v.numpy().astype(np.float32) for k, v in test.items()} | seeds[0]
        np_val = {k: v.numpy().astype(np.float32) for k, v in val.items()}
        rep = build_report(self, np_test, d.y_test.numpy(), pinfo, einfo, seeds, np_val, d.y_val.numpy())
        (self.work / "eval").mkdir(exist_ok=True)
        np.savez_compressed(
            self.work / "eval/logits-test-all.npz", labels=d.y_test.numpy(), **{k: v.astype(np.float16) for k, v in np_test.items()}
        )
        self.set_info("report", rep)
        return rep
