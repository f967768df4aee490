"""PyTorch backend: CPU in fp32 (bf16 on request), CUDA in fp16.

Precision (`precision` setting): `auto` is fp16 on CUDA and fp32 on the CPU. `bf16` on the CPU
runs the models under bf16 autocast where the CPU has native bf16 (AVX-512 BF16, AMX; about 2x
here) and falls back to fp32, with a warning, where it has not or `ATE_CPU_BF16=0` turns it off.
Not the CPU default: in bf16 a frame's logits depend on the batch it shares (up to 0.03 here, fp32:
7e-6), so labels near tau can differ from an offline replay of the same frames;
`bench/precision.py` measures speed and top-1 agreement with fp32.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, group_rows, to_input
from askexpert.hardware import cpu_bf16_switched_off, cpu_has_bf16
from askexpert.log import get_logger
from askexpert.pack import ExpertEntry, ModelEntry, Pack

log = get_logger("askexpert.backends.torch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: str) -> str:
    """The precision that runs: auto picks per device; bf16 needs native bf16 on a CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    cuda = device.startswith("cuda")
    if precision == "auto":
        return "fp16" if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("fp16 runs on CUDA only; on a CPU use bf16 (or fp32)")
    if precision == "bf16" and not cuda and not cpu_has_bf16():
        why = "ATE_CPU_BF16=0 turns CPU bf16 off" if cpu_bf16_switched_off() else "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
        log.warning(f"{why}: running fp32")
        return "fp32"
    return precision


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "cpu", threads: int = 0, precision: str = "auto") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but PyTorch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(threads)  # process-wide: one backend per process
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, device)
        cpu_bf16 = self.precision == "bf16" and self.device.type == "cpu"
        if cpu_bf16:  # by autocast: weights and layer norms stay fp32, matmuls run in bf16
            self.dtype = torch.float32
            self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        else:  # the weights themselves in the inference dtype (on CUDA)
            self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
            self.autocast = nullcontext

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device, self.dtype).eval()

    def _tensor(self, pack: Pack, images: np.ndarray) -> torch.Tensor:
        spec = pack.manifest.input
        return torch.from_numpy(to_input(images, spec.mean, spec.std)).to(self.device, self.dtype)

    def classifier(self, pack: Pack, entry: ModelEntry) -> Classifier:
        return _TorchClassifier(self, pack, self._place(pack.load_vit(entry)))

    def experts(self, pack: Pack, entries: Sequence[ExpertEntry]) -> ExpertLibrary:
        trunk = self._place(pack.load_trunk()) if any(e.kind == "tail" for e in entries) else None
        models = {e.key: self._place(pack.load_expert(e)) for e in entries}
        tails = {e.key for e in entries if e.kind == "tail"}
        return _TorchExperts(self, pack, trunk, models, tails)


class _TorchClassifier(Classifier):
    def __init__(self, backend: TorchBackend, pack: Pack, model: torch.nn.Module) -> None:
        self.backend, self.pack, self.model = backend, pack, model

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.backend.autocast():
            return self.model(self.backend._tensor(self.pack, images)).float().cpu().numpy()


class _TorchExperts(ExpertLibrary):
    def __init__(self, backend, pack, trunk, models: dict[str, torch.nn.Module], tails: set[str]) -> None:
        self.backend, self.pack, self.trunk, self.models, self.tails = backend, pack, trunk, models, tails
        self.keys = list(models)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        with self.backend.autocast():
            return self._run(images, keys)

    def _run(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        x = self.backend._tensor(self.pack, images)
        groups = group_rows(keys)
        tokens = self.trunk(x) if self.trunk is not None and self.tails & groups.keys() else None
        out = torch.empty((len(keys), len(self.pack.manifest.classes)), dtype=torch.float32)
        for key, rows in groups.items():
            idx = torch.from_numpy(rows).to(self.backend.device)
            inp = tokens[idx] if key in self.tails else x[idx]
            out[torch.from_numpy(rows)] = self.models[key](inp).float().cpu()
        return out.numpy()
