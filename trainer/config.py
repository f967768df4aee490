"""The settings of a training run (`trainer pack` and its steps): every field is a flag of the
`trainer` command (trainer/cli.py) and is recorded in the work folder and the pack's manifest."""

from __future__ import annotations

from dataclasses import dataclass, field


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
