"""TensorRT backend without TensorRT: the clear failure, the ONNX it consumes, and its plumbing.

TensorRT and a GPU are not on CI machines. What is checked here:
- without `tensorrt` the backend fails at construction with a message naming what to install;
- the ONNX files it builds engines from exist, have a dynamic batch axis and match PyTorch;
- the engine cache key (GPU kind, TensorRT version), the fp16 flag choice, one build per engine
  under concurrency, atomic writes, the build step's exits, and the batch profile.
No stand-in for TensorRT: its build, cache, warm-up and numerics are verified only where TensorRT
runs (a Jetson or a CUDA box; docs/deploy.md says what was verified where).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from askexpert.backends import open_backend
from askexpert.backends import tensorrt_backend as trtb
from askexpert.backends.base import to_input
from askexpert.backends.engine_cache import (
    BuildFlags,
    GpuId,
    atomic_write,
    build_flags,
    cached_or_built,
    engine_path,
    timing_cache_path,
)
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


ORIN_NANO = GpuId("Orin", (8, 7), 8)  # what torch reports on an Orin Nano 8GB: the name alone says nothing
AGX_ORIN = GpuId("Orin", (8, 7), 16)


def test_engine_cache_key_names_checkpoint_trt_gpu_kind_and_profile(pack, tmp_path):
    entry = pack.manifest.generalist
    a = engine_path(tmp_path, entry.sha256, "vit", "10.3.0", ORIN_NANO, trtb.Profile().tag)
    assert a.parent == tmp_path / "tensorrt" and entry.sha256[:20] in a.name
    assert "trt10.3.0" in a.name and "sm87x8" in a.name and "b1-8-32-fp16" in a.name
    others = {
        engine_path(tmp_path, entry.sha256, "vit", "10.3.0", AGX_ORIN, trtb.Profile().tag),  # same name, more SMs
        engine_path(tmp_path, entry.sha256, "vit", "8.6.2", ORIN_NANO, trtb.Profile().tag),
        engine_path(tmp_path, entry.sha256, "vit", "10.3.0", GpuId("NVIDIA H100", (9, 0), 132), trtb.Profile().tag),
        engine_path(tmp_path, entry.sha256, "vit", "10.3.0", ORIN_NANO, trtb.Profile(max_batch=64).tag),
        engine_path(tmp_path, entry.sha256, "trunk", "10.3.0", ORIN_NANO, trtb.Profile().tag),
    }
    assert len(others) == 5 and a not in others
    assert timing_cache_path(tmp_path, "10.3.0", ORIN_NANO) != timing_cache_path(tmp_path, "10.3.0", AGX_ORIN)
    with pytest.raises(ValueError):
        trtb.Profile(min_batch=4, opt_batch=2, max_batch=8)


def test_fp16_is_asked_for_the_way_each_tensorrt_takes_it():
    """10.x: weakly typed + BuilderFlag.FP16 (refused on strongly typed networks); 11+: no flag exists."""
    assert build_flags("10.3.0", True, ORIN_NANO, has_fp16_flag=True) == BuildFlags(strongly_typed=False, fp16_flag=True)
    assert build_flags("10.3.0", False, ORIN_NANO, has_fp16_flag=True) == BuildFlags(strongly_typed=False, fp16_flag=False)
    assert build_flags("10.3.0", True, GpuId("GTX 1080", (6, 1), 20), True).fp16_flag is False  # no fast fp16
    assert build_flags("11.1.0", False, ORIN_NANO, has_fp16_flag=False) == BuildFlags(strongly_typed=True, fp16_flag=False)
    with pytest.raises(ValueError, match="ATE_TRT_FP16=0"):
        build_flags("11.1.0", True, ORIN_NANO, has_fp16_flag=False)


def _build_once(path: str, log_path: str, barrier, results) -> None:
    """One process asking for the engine at the same moment as the others."""

    def build() -> bytes:
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # a slow build: the others arrive while it runs
        return b"engine-%d" % os.getpid()

    barrier.wait()
    results.put(cached_or_built(Path(path), build)[0])


def test_concurrent_builds_of_one_engine_build_it_once(tmp_path):
    """Processes sharing the cache (compose's build step, a restarted server): one builds, all get its engine."""
    import multiprocessing as mp

    path, log_path = tmp_path / "tensorrt" / "x.engine", tmp_path / "builds.log"
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_build_once, args=(str(path), str(log_path), barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    builders = log_path.read_text().split()
    assert len(builders) == 1 and results == [b"engine-" + builders[0].encode()] * 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.engine", "x.engine.lock"]  # no temp file left


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.engine"
    atomic_write(path, b"old")

    with pytest.raises(TypeError):  # the write fails half-way (a str is no bytes)
        atomic_write(path, "new")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.engine"]


@pytest.mark.parametrize("cli", ["edge_node.cli build-engine", "expert_hub.cli build-engines"])
def test_build_step_without_tensorrt(cli, tiny_pack):
    """Compose's start-up step: nothing to build for torch (exit 0); without TensorRT a one-line error."""
    import subprocess

    mod, cmd = cli.split()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    base = [sys.executable, "-m", mod, cmd, "--pack", str(tiny_pack)]
    torch_run = subprocess.run([*base, "--backend", "torch"], env=env, capture_output=True, text=True, timeout=120)
    assert torch_run.returncode == 0 and "no engines to build" in torch_run.stderr
    if importlib.util.find_spec("tensorrt") is None:
        trt_run = subprocess.run([*base, "--backend", "tensorrt"], env=env, capture_output=True, text=True, timeout=120)
        assert trt_run.returncode == 2 and "cannot import tensorrt" in trt_run.stderr


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

    def export_2_2(
        model,
        args,
        f,
        export_params=True,
        verbose=False,
        training=None,
        input_names=None,
        output_names=None,
        operator_export_type=None,
        opset_version=None,
        do_constant_folding=True,
        dynamic_axes=None,
        keep_initializers_as_inputs=None,
        custom_opsets=None,
        export_modules_as_functions=False,
    ):
        """torch.onnx.export's parameters in torch 2.2.2."""

    assert legacy_exporter_kwargs(export_2_2) == {}
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    assert legacy_exporter_kwargs(torch.onnx.export) == ({"dynamo": False} if has_dynamo else {})
