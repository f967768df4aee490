"""Many processes, one fit: torchrun + DistributedDataParallel.

`torchrun --nproc-per-node N [--nnodes M ...] -m trainer pack ...` starts N processes per node;
each joins the process group torchrun describes (NCCL on GPUs, gloo on CPUs), trains its share of
every global batch, and DDP averages the gradients. Every rank runs every step (same control flow,
same files read); only rank 0 writes records, weights and checkpoints, and the others wait at a
barrier before reading them. Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: str) -> None:
    """Join torchrun's process group when WORLD_SIZE > 1: NCCL with one GPU per process
    (LOCAL_RANK) for `device` cuda, else gloo. A lone process is left alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    """Every rank waits here until all arrive (after rank 0 wrote what the others will read)."""
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model DDP-wrapped when several processes train it (parameters broadcast from rank 0,
    gradients averaged); the model itself otherwise."""
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor (a loss for the records); the tensor itself on one process."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / world()


def local_batch(global_batch: int) -> int:
    """This rank's share of a global batch; the batch must split evenly, so that DDP's average of
    the ranks' gradients is exactly the gradient of the whole batch (each rank's loss is divided
    by its own, equal, share)."""
    if global_batch % world():
        raise SystemExit(f"--batch-size {global_batch} does not split evenly across {world()} processes")
    return global_batch // world()
