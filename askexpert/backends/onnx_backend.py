"""ONNX Runtime backend (CPU): models exported from the pack once, then cached.

Precision: fp32 (`auto`), or `int8`: ONNX Runtime's dynamic quantization (int8 weights of the
matrix multiplications, activations quantized per call), made once next to the fp32 file;
`bench/precision.py --backend onnx` measures its speed and top-1 agreement with fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, group_rows, to_input
from askexpert.onnx_export import onnx_for, unique_tmp
from askexpert.pack import ExpertEntry, ModelEntry, Pack


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(self, device: str = "cpu", threads: int = 0, precision: str = "auto") -> None:
        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"precision {precision!r}: the onnx backend runs auto (fp32), fp32 or int8")
        self.device, self.threads = device, threads
        self.precision = "int8" if precision == "int8" else "fp32"

    def _session(self, path: Path):
        import onnxruntime as ort

        if self.precision == "int8":
            path = int8_for(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads  # 0: ONNX Runtime's default, one per core
        cuda = ["CUDAExecutionProvider"] if self.device.startswith("cuda") else []
        return ort.InferenceSession(str(path), options, providers=[*cuda, "CPUExecutionProvider"])

    def classifier(self, pack: Pack, entry: ModelEntry) -> Classifier:
        return _OnnxClassifier(pack, self._session(onnx_for(pack, entry, "vit")))

    def experts(self, pack: Pack, entries: Sequence[ExpertEntry]) -> ExpertLibrary:
        trunk = None
        if any(e.kind == "tail" for e in entries):
            trunk = self._session(onnx_for(pack, pack.manifest.trunk, "trunk"))
        sessions = {e.key: self._session(onnx_for(pack, e, "tail" if e.kind == "tail" else "vit")) for e in entries}
        return _OnnxExperts(pack, trunk, sessions, {e.key for e in entries if e.kind == "tail"})


class _OnnxClassifier(Classifier):
    def __init__(self, pack: Pack, session) -> None:
        self.spec, self.session = pack.manifest.input, session

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": to_input(images, self.spec.mean, self.spec.std)})[0]


class _OnnxExperts(ExpertLibrary):
    def __init__(self, pack: Pack, trunk, sessions: dict, tails: set[str]) -> None:
        self.spec, self.trunk, self.sessions, self.tails = pack.manifest.input, trunk, sessions, tails
        self.n_classes = len(pack.manifest.classes)
        self.keys = list(sessions)

    def __call__(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        x = to_input(images, self.spec.mean, self.spec.std)
        groups = group_rows(keys)
        tokens = self.trunk.run(None, {"images": x})[0] if self.trunk and self.tails & groups.keys() else None
        out = np.empty((len(keys), self.n_classes), dtype=np.float32)
        for key, rows in groups.items():
            feed = {"tokens": tokens[rows]} if key in self.tails else {"images": x[rows]}
            out[rows] = self.sessions[key].run(None, feed)[0]
        return out


def int8_for(path: Path) -> Path:
    """The dynamically quantized copy of an fp32 ONNX file, made on first use (atomic, like the export)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + "-int8.onnx")
    if not out.is_file():
        tmp = unique_tmp(out)
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        tmp.replace(out)
    return out
