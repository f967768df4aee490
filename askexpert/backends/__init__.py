"""Inference backends behind one interface: a classifier for the edge, an expert library for the hub.

Both take uint8 frames (N, H, W, C) at the pack's input size and return float32 logits, so the
edge and the hub never see framework types. Backends: torch (CPU; CUDA with fp16), onnx (ONNX
Runtime, CPU), tensorrt (Jetson / CUDA; imported only when chosen), and auto, which picks one.
"""

from __future__ import annotations

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, to_input
from askexpert.hardware import default_threads


def resolve_backend(name: str, device: str, precision: str) -> str:
    """`auto`: ONNX Runtime on a CPU (torch for bf16 and fp16, which it alone runs), torch on CUDA.
    On this project's 2-core CPU, ONNX Runtime ran a batch of one 2-3x faster than torch
    (python bench/paced_latency.py --backend onnx | torch): per-operator overhead, not arithmetic,
    dominates these small ViTs at the batch sizes a paced stream makes."""
    if name != "auto":
        return name
    if device.startswith("cuda") or precision in ("bf16", "fp16"):
        return "torch"
    return "onnx"


def open_backend(name: str, device: str = "cpu", threads: int = 0, precision: str = "auto") -> Backend:
    """The backend called `name` (or chosen by `resolve_backend`); an import error names what is missing.

    `threads` caps CPU inference threads, so that processes sharing a box do not oversubscribe its
    cores (0: `askexpert.hardware.default_threads`, half the usable cores). `precision`: torch auto |
    fp32 | bf16 | fp16, onnx auto | fp32 | int8 (see each backend); tensorrt builds its own (auto only).
    """
    name = resolve_backend(name, device, precision)
    threads = threads or default_threads()
    if name == "tensorrt" and precision != "auto":
        raise ValueError(f"precision {precision}: the tensorrt backend chooses its own (fp16 where the GPU has it)")
    if name == "torch":
        from askexpert.backends.torch_backend import TorchBackend

        return TorchBackend(device, threads, precision)
    if name == "onnx":
        from askexpert.backends.onnx_backend import OnnxBackend

        return OnnxBackend(device, threads, precision)
    if name == "tensorrt":
        from askexpert.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(device)
    raise ValueError(f"unknown backend {name!r}: choose auto, torch, onnx or tensorrt")


__all__ = ["Backend", "Classifier", "ExpertLibrary", "open_backend", "resolve_backend", "to_input"]
