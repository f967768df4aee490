"""TensorRT backend without TensorRT: the clear failure, the ONNX it consumes, and its plumbing.

TensorRT and a GPU are not on CI machines. What is checked here:
- without `tensorrt` the backend fails at construction with a message naming what to install;
- the ONNX files it builds engines from exist, have a dynamic batch axis and match PyTorch;
- the engine cache key and the batch profile.
No stand-in for TensorRT: its build, cache, warm-up and numerics are verified only where TensorRT
runs (a Jetson or a CUDA box; docs/deploy.md says what was verified where).
"""

from __future__ import annotations

import inspect
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from askexpert.backends import open_backend
from askexpert.backends import tensorrt_backend as trtb
from askexpert.backends.base import to_input
from askexpert.backends.torch_backend import TorchBackend
from askexpert.onnx_export import onnx_for
from askexpert.pack import Pack


@pytest.fixture(scope="module")
def pack(tiny_pack) -> Pack:
    return Pack.load(tiny_pack)


@pytest.fixture(scope="module")
def onnx_cache(pack, tmp_path_factory):
    """Every ONNX file the tests need, exported once (torch.onnx.export is the slow part)."""
    root = tmp_path_factory.mktemp("onnx-cache")
    for _, entry, role in trtb.onnx_plan(pack, list(pack.manifest.experts)[:3], classifier=pack.manifest.generalist):
        onnx_for(pack, entry, role, root)
    return root


@pytest.fixture
def cache(onnx_cache, tmp_path):
    shutil.copytree(onnx_cache / "onnx", tmp_path / "onnx")
    return tmp_path


def _images(pack: Pack, n: int, seed: int = 0) -> np.ndarray:
    spec = pack.manifest.input
    return np.random.default_rng(seed).integers(0, 256, (n, spec.size, spec.size, spec.channels), dtype=np.uint8)


def test_clear_failure_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(ImportError) as info:
        open_backend("tensorrt", "cuda")
    assert isinstance(info.value, trtb.TensorRTUnavailable)
    msg = str(info.value)
    assert "tensorrt" in msg and "python3-libnvinfer" in msg and "tensorrt-cu12" in msg and "--backend onnx" in msg


def test_onnx_it_consumes_has_dynamic_batch_and_matches_torch(pack, cache):
    tmp_path = cache
    entries = list(pack.manifest.experts)
    plan = trtb.onnx_plan(pack, entries, classifier=pack.manifest.generalist)
    roles = [role for _, _, role in plan]
    assert roles[0] == "vit" and ("trunk" in roles) == any(e.kind == "tail" for e in entries)
    assert len(plan) == 1 + len(entries) + ("trunk" in roles)
    for _, entry, role in plan[:3]:
        path = onnx_for(pack, entry, role, tmp_path)
        assert path.is_file()
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        for tensor in (*model.graph.input, *model.graph.output):
            dim0 = tensor.type.tensor_type.shape.dim[0]
            assert dim0.dim_param and not dim0.HasField("dim_value"), f"{role}: batch axis of {tensor.name} is not dynamic"
        for tensor in model.graph.input:  # the engine's profile varies the batch only
            assert all(d.HasField("dim_value") for d in tensor.type.tensor_type.shape.dim[1:]), "only batch may be dynamic"

    torch_be = TorchBackend("cpu")
    gen = onnx_for(pack, pack.manifest.generalist, "vit", tmp_path)
    sess = ort.InferenceSession(str(gen), providers=["CPUExecutionProvider"])
    clf = torch_be.classifier(pack, pack.manifest.generalist)
    for n in (1, 5):
        imgs = _images(pack, n, seed=n)
        got = sess.run(None, {"images": to_input(imgs, pack.manifest.input.mean, pack.manifest.input.std)})[0]
        assert got.shape == (n, len(pack.manifest.classes))
        np.testing.assert_allclose(got, clf(imgs), rtol=1e-3, atol=1e-4)


def test_engine_cache_key_names_checkpoint_trt_gpu_and_profile(pack, tmp_path):
    entry = pack.manifest.generalist
    a = trtb.engine_path(tmp_path, entry, "vit", "10.3.0", "Orin (nvgpu)", trtb.Profile())
    assert a.parent == tmp_path / "tensorrt" and entry.sha256[:20] in a.name
    assert "trt10.3.0" in a.name and "Orin_nvgpu" in a.name and "b1-8-32-fp16" in a.name
    assert a != trtb.engine_path(tmp_path, entry, "vit", "8.6.2", "Orin (nvgpu)", trtb.Profile())
    assert a != trtb.engine_path(tmp_path, entry, "vit", "10.3.0", "NVIDIA H100", trtb.Profile())
    assert a != trtb.engine_path(tmp_path, entry, "vit", "10.3.0", "Orin (nvgpu)", trtb.Profile(max_batch=64))
    with pytest.raises(ValueError):
        trtb.Profile(min_batch=4, opt_batch=2, max_batch=8)


def test_profile_from_env(monkeypatch):
    monkeypatch.setenv("ATE_TRT_MAX_BATCH", "64")
    monkeypatch.setenv("ATE_TRT_OPT_BATCH", "16")
    monkeypatch.setenv("ATE_TRT_FP16", "0")
    p = trtb.Profile.from_env()
    assert (p.min_batch, p.opt_batch, p.max_batch, p.fp16) == (1, 16, 64, False)
    assert trtb.Profile.from_env(max_batch=4).opt_batch == 4  # opt clamped into range


def test_legacy_exporter_keyword_only_where_torch_takes_it():
    """torch 2.2 (JetPack 6.0's image) has no `dynamo` keyword and rejects it; newer ones need it off."""
    import torch

    from askexpert.onnx_export import legacy_exporter_kwargs

    def export_2_2(model, args, f, export_params=True, verbose=False, training=None, input_names=None,
                   output_names=None, operator_export_type=None, opset_version=None, do_constant_folding=True,
                   dynamic_axes=None, keep_initializers_as_inputs=None, custom_opsets=None,
                   export_modules_as_functions=False):  # fmt: skip
        """torch.onnx.export's parameters in torch 2.2.2."""

    assert legacy_exporter_kwargs(export_2_2) == {}
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    assert legacy_exporter_kwargs(torch.onnx.export) == ({"dynamo": False} if has_dynamo else {})
