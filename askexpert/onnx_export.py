"""ONNX export of pack models (dynamic batch), cached by checkpoint hash.

Shared by the ONNX Runtime and TensorRT backends and by the trainer's export step.
Roles: `vit` (images -> logits), `trunk` (images -> tokens), `tail` (tokens -> logits).
"""

from __future__ import annotations

import inspect
import os
import secrets
import warnings
from pathlib import Path
from typing import Callable

import torch

from askexpert.pack import ModelEntry, Pack

CACHE_DIR = Path(os.environ.get("ATE_CACHE_DIR", Path.home() / ".cache" / "ask-the-expert"))
OPSET = 17


def legacy_exporter_kwargs(export: Callable) -> dict[str, bool]:
    """`dynamo=False` where `export` takes it (torch >= 2.4, where newer releases default to the dynamo
    exporter); torch 2.2 (JetPack 6.0's image) rejects the keyword and has only the legacy exporter."""
    return {"dynamo": False} if "dynamo" in inspect.signature(export).parameters else {}


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, input_name: str, output_name: str) -> Path:
    """Export with a dynamic batch axis (legacy TorchScript exporter: no onnxscript needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval().float(),
            (sample,),
            str(tmp),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            **legacy_exporter_kwargs(torch.onnx.export),
        )
    tmp.replace(path)  # atomic: a half-written file never looks cached
    return path


def unique_tmp(path: Path) -> Path:
    """A temporary name beside `path` that no other process uses: an edge and a hub starting together
    may export the same model at once, and each then renames its own complete file into place."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def onnx_for(pack: Pack, entry: ModelEntry, role: str, cache_dir: Path | None = None) -> Path:
    """The ONNX file for one pack model in one role, exported on first use."""
    path = Path(cache_dir or CACHE_DIR) / "onnx" / f"{entry.sha256[:20]}-{role}.onnx"
    if path.is_file():
        return path
    spec = pack.manifest.input
    images = torch.zeros(2, spec.channels, spec.size, spec.size)
    if role == "vit":
        return export_onnx(pack.load_vit(entry), images, path, "images", "logits")
    if role == "trunk":
        return export_onnx(pack.load_trunk(), images, path, "images", "tokens")
    if role == "tail":
        arch = entry.vit_arch  # tokens: the class token and one per patch, at the trunk's width
        tokens = torch.zeros(2, 1 + (arch.img_size // arch.patch_size) ** 2, arch.embed_dim)
        return export_onnx(pack.load_expert(entry), tokens, path, "tokens", "logits")
    raise ValueError(f"unknown ONNX role {role!r}")
