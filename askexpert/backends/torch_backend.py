"""PyTorch backend: CPU in fp32, CUDA in fp16."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, group_rows, to_input
from askexpert.pack import ExpertEntry, ModelEntry, Pack


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "cpu", threads: int = 0) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but PyTorch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(threads)  # process-wide: one backend per process
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32

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
        return self.model(self.backend._tensor(self.pack, images)).float().cpu().numpy()


class _TorchExperts(ExpertLibrary):
    def __init__(self, backend, pack, trunk, models: dict[str, torch.nn.Module], tails: set[str]) -> None:
        self.backend, self.pack, self.trunk, self.models, self.tails = backend, pack, trunk, models, tails
        self.keys = list(models)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        x = self.backend._tensor(self.pack, images)
        groups = group_rows(keys)
        tokens = self.trunk(x) if self.trunk is not None and self.tails & groups.keys() else None
        out = torch.empty((len(keys), len(self.pack.manifest.classes)), dtype=torch.float32)
        for key, rows in groups.items():
            idx = torch.from_numpy(rows).to(self.backend.device)
            inp = tokens[idx] if key in self.tails else x[idx]
            out[torch.from_numpy(rows)] = self.models[key](inp).float().cpu()
        return out.numpy()
