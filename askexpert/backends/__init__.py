"""Inference backends behind one interface: a classifier for the edge, an expert library for the hub.

Both take uint8 frames (N, H, W, C) at the pack's input size and return float32 logits, so the
edge and the hub never see framework types. Backends: torch (CPU; CUDA with fp16), onnx (ONNX
Runtime, CPU), tensorrt (Jetson / CUDA; imported only when chosen).
"""

from __future__ import annotations

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, to_input


def open_backend(name: str, device: str = "cpu", threads: int = 0, precision: str = "auto") -> Backend:
    """The backend called `name`; an import error names what is missing.

    `threads` > 0 caps CPU inference threads, so that processes sharing a box do not oversubscribe
    its cores (0: the library's default, one per core). `precision`: torch auto | fp32 | bf16 | fp16,
    onnx auto | fp32 | int8 (see each backend); tensorrt builds its own (auto only).
    """
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
    raise ValueError(f"unknown backend {name!r}: choose torch, onnx or tensorrt")


__all__ = ["Backend", "Classifier", "ExpertLibrary", "open_backend", "to_input"]
