"""Writing model packs: safetensors checkpoints plus a manifest the runtime validates."""

from __future__ import annotations

from pathlib import Path

import torch

from askexpert.datasets import FASHION_MNIST_CLASSES
from askexpert.models import ExpertTail, ViTArch, build_vit
from askexpert.pack import ExpertEntry, InputSpec, Manifest, ModelEntry, TrunkEntry, save_weights, write_manifest
from askexpert.routing import expert_key, required_experts
from trainer import workfiles as files

# Fashion-MNIST has no superclasses: the documented grouping by garment kind, S = 4.
FASHION_MNIST_SUBSETS = ["tops", "bottoms-dresses", "footwear", "bags"]
FASHION_MNIST_PARTITION = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]  # tee, trouser, pullover, dress, coat, ...


def model_entry(model: torch.nn.Module, arch: ViTArch, root: Path, file: str, **extra) -> dict:
    """Save one model's weights into the pack folder and describe it for the manifest."""
    sha = save_weights(model, root / file)
    return {"file": file, "sha256": sha, "arch": arch.to_dict(), **extra}


def build_random_pack(root: Path, *, n_subsets: int = 4, k: int = 2, tau: float = 0.8, depth: int = 2, seed: int = 0) -> Path:
    """A tiny untrained pack with the real layout, for tests and smoke runs (3H edge, 4H trunk with
    one-block tails, Fashion-MNIST's classes and input)."""
    torch.manual_seed(seed)
    classes = list(FASHION_MNIST_CLASSES)
    partition = FASHION_MNIST_PARTITION if n_subsets == 4 else [i % n_subsets for i in range(len(classes))]
    tail_blocks, img_size = 1, 28
    root.mkdir(parents=True, exist_ok=True)
    common = dict(depth=depth, patch_size=7, img_size=img_size, in_chans=1, num_classes=len(classes))
    edge_arch, trunk_arch = ViTArch.from_shape("3H", **common), ViTArch.from_shape("4H", **common)
    generalist, trunk = build_vit(edge_arch), build_vit(trunk_arch)
    experts = []
    for subset in required_experts(n_subsets, k):
        key = expert_key(subset)
        tail = ExpertTail.from_vit(trunk, trunk_arch, tail_blocks)
        for p in tail.parameters():  # make each expert differ from the trunk's own tail
            p.data.add_(torch.randn_like(p) * 0.05)
        experts.append(
            model_entry(tail, trunk_arch, root, files.pack_expert(key), kind="tail", tail_blocks=tail_blocks) | {"subset": list(subset)}
        )
    trunk_entry = model_entry(trunk, trunk_arch, root, files.pack_generalist("4H"))
    manifest = Manifest(
        name="random-test-pack",
        dataset="random",
        classes=classes,
        partition=partition,
        subset_names=[f"subset{i}" for i in range(n_subsets)],
        k=k,
        tau=tau,
        input=InputSpec(size=img_size, channels=1, mean=[0.2868], std=[0.3524]),
        generalist=ModelEntry(**model_entry(generalist, edge_arch, root, files.pack_generalist("3H"))),
        trunk=TrunkEntry(**trunk_entry, blocks=depth - tail_blocks),
        experts=[ExpertEntry(**e) for e in experts],
        baselines={"4H": ModelEntry(**trunk_entry)},
        training={"recipe": "random (untrained)"},
    )
    write_manifest(root, manifest)
    return root
