"""A small progressive fit, run by tests/test_trainer_distributed.py in one process or under
`torchrun --nproc-per-node 2` (gloo): rank 0 writes the final weights and losses.

  python tests/ddp_fit.py OUT_DIR [--crash-after-epoch K]
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from askexpert.models import ViTArch, build_vit
from trainer import distributed as dist
from trainer import engine
from trainer.engine import FitEnv, FitSpec, Job, fit

N, CLASSES, BATCH = 96, 6, 16
TARGETS = (0,)  # D_I: one class of six, so a batch's target samples split unevenly across ranks


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    x = torch.randn(N, 1, 12, 12, generator=g) + y[:, None, None, None] * 0.3
    return x, y, (y + 1) % CLASSES  # "teacher labels"


def crash_after(k: int) -> None:
    """An interruption right after epoch k's checkpoint: rank 0 dies, torchrun stops the others."""
    save = engine.save_checkpoint

    def save_then_die(ckpt_dir, jobs, epochs_done, extra):
        save(ckpt_dir, jobs, epochs_done, extra)
        if epochs_done == k:
            os._exit(3)

    engine.save_checkpoint = save_then_die


def main(out: Path, crash: int) -> None:
    dist.init_from_env("cpu")
    torch.manual_seed(0)
    model = build_vit(ViTArch(32, 2, 2, 2.0, 4, 12, 1, CLASSES))
    x, y, teacher = data()
    mask = torch.zeros(CLASSES, dtype=torch.bool)
    mask[list(TARGETS)] = True
    spec = FitSpec(epochs=3, batch_size=BATCH, lr=2e-3, warmup_epochs=0.5, aug={"pad": 2, "flip": True}, seed=1)
    if crash:
        crash_after(crash)
    env = FitEnv(ckpt_dir=out / "ckpt", desc="ddp test", log=lambda s: print(s, flush=True))
    summary = fit([Job("m", model, "progressive", mask)], x, y, teacher, spec, env)
    if dist.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
        (out / "summary.json").write_text(json.dumps({**summary, "world": dist.world()}))
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
