"""Every backend gives the same logits; a mixed-expert batch equals experts run one by one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from askexpert.backends import open_backend
from askexpert.pack import Pack, PackError


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (7, 28, 28, 1), dtype=np.uint8), ["0", "0-2", "3", "0", "1-2", "0-2", "2-3"]


def test_torch_and_onnx_agree(tiny_pack, batch, tmp_path, monkeypatch):
    monkeypatch.setattr("askexpert.onnx_export.CACHE_DIR", tmp_path)
    images, keys = batch
    pack = Pack.load(tiny_pack)
    out = {}
    for name in ("torch", "onnx"):
        b = open_backend(name)
        out[name] = (b.classifier(pack, pack.manifest.generalist)(images), b.experts(pack, pack.manifest.experts)(images, keys))
    # fp32 both: 1.4e-6 apart at most (logits up to 2.2), as well with torch kept to AVX2 kernels
    assert np.allclose(out["torch"][0], out["onnx"][0], atol=1e-4)
    assert np.allclose(out["torch"][1], out["onnx"][1], atol=1e-4)
    assert list(tmp_path.glob("onnx/*-trunk.onnx")), "ONNX is cached by checkpoint hash"


def test_mixed_batch_equals_single_expert_runs(tiny_pack, batch):
    images, keys = batch
    pack = Pack.load(tiny_pack)
    lib = open_backend("torch").experts(pack, pack.manifest.experts)
    mixed = lib(images, keys)
    single = np.concatenate([lib(images[i : i + 1], [k]) for i, k in enumerate(keys)])
    # fp32, only the batch shape differs: 2.4e-7 apart with AVX-512 kernels, 1.2e-6 with torch kept to
    # AVX2 (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2); 17x that
    assert np.allclose(mixed, single, atol=2e-5)
    assert not np.allclose(mixed[0], lib(images[:1], ["0-2"])[0]), "experts differ"


def test_corrupt_or_missing_pack_is_a_clear_error(tiny_pack, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_pack, bad)
    with open(bad / "expert-0-2.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    pack = Pack.load(bad)
    with pytest.raises(PackError, match="corrupt"):
        open_backend("torch").experts(pack, pack.manifest.experts)
    (bad / "generalist-3H.safetensors").unlink()
    with pytest.raises(PackError, match="lacks"):
        Pack.load(bad)
    with pytest.raises(PackError, match="not a model pack"):
        Pack.load(tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        open_backend("tflite")


def test_fill_batch_waits_fills_and_stops_at_the_end_marker():
    import queue

    from askexpert.batching import fill_batch

    q: queue.Queue = queue.Queue()
    for i in range(5):
        q.put(i)
    assert fill_batch(q, "first", 4, 0.01) == (["first", 0, 1, 2], False)  # capped at max_size
    end = object()
    q.put(end)
    assert fill_batch(q, "x", 10, 0.01, end=end) == (["x", 3, 4], True)  # the marker ends it, unbatched
    assert fill_batch(q, "y", 10, 0.0) == (["y"], False)  # empty queue, no wait


def test_fill_batch_waits_only_under_load():
    """A lone item goes at once whatever max_wait is; with items queued behind it, the batch waits for more."""
    import queue
    import threading

    from askexpert.batching import fill_batch

    q: queue.Queue = queue.Queue()
    out: list = []
    t = threading.Thread(target=lambda: out.append(fill_batch(q, "alone", 10, 3600.0)))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and out == [(["alone"], False)]  # an hour's max_wait, not waited

    end = object()
    q.put("a")

    def producer() -> None:  # more arrive only after the batch has taken "a"
        while not q.empty():
            time.sleep(0.001)
        for item in ("b", "c", end):
            q.put(item)

    threading.Thread(target=producer).start()
    assert fill_batch(q, "first", 10, 3600.0, end=end) == (["first", "a", "b", "c"], True)


def test_thread_setting_reaches_the_libraries(tiny_pack, tmp_path, monkeypatch):
    """`threads` caps torch's and ONNX Runtime's CPU threads (edge and hub sharing one box)."""
    import torch

    monkeypatch.setattr("askexpert.onnx_export.CACHE_DIR", tmp_path)
    pack = Pack.load(tiny_pack)
    before = torch.get_num_threads()
    try:
        open_backend("torch", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    clf = open_backend("onnx", threads=1).classifier(pack, pack.manifest.generalist)
    assert clf.session.get_session_options().intra_op_num_threads == 1


def test_precision_setting(tiny_pack, batch):
    """bf16 on a CPU runs under autocast where the CPU has native bf16 (else fp32, warned); fp16 is
    CUDA's; other backends refuse a torch precision rather than ignore it."""
    from askexpert.backends.torch_backend import resolve_precision
    from askexpert.hardware import cpu_has_bf16

    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ValueError, match="CUDA only"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_precision("int4", "cpu")
    with pytest.raises(ValueError, match="onnx backend runs"):
        open_backend("onnx", precision="bf16")
    with pytest.raises(ValueError, match="tensorrt backend chooses its own"):
        open_backend("tensorrt", precision="int8")
    images, _ = batch
    pack = Pack.load(tiny_pack)
    fp32 = open_backend("torch").classifier(pack, pack.manifest.generalist)(images)
    bf16 = open_backend("torch", precision="bf16").classifier(pack, pack.manifest.generalist)(images)
    # bf16 against fp32: 3.6e-3 apart with AMX, 4.6e-3 with oneDNN kept to AVX512_CORE_BF16 (an AMD
    # Zen 4's kernels); 0.1 leaves 20x, and is still far below the logits' spread
    assert bf16.dtype == np.float32 and np.allclose(bf16, fp32, atol=0.1)
    assert (bf16 != fp32).any() == cpu_has_bf16()  # bf16 really ran where the CPU has it


def test_cpu_bf16_switch(tiny_pack, batch, monkeypatch):
    """`ATE_CPU_BF16=0` turns CPU bf16 off wherever the CPU's flags would turn it on: the torch
    backend's bf16 runs fp32 (warned), the training autocast is fp32. Read at every call."""
    import torch

    from askexpert.backends.torch_backend import resolve_precision
    from askexpert.hardware import _cpu_flags_bf16, cpu_bf16_switched_off, cpu_has_bf16
    from trainer.engine import autocast

    for value, off in (("0", True), ("off", True), ("False", True), ("1", False), ("", False)):
        monkeypatch.setenv("ATE_CPU_BF16", value)
        assert cpu_bf16_switched_off() == off and cpu_has_bf16() == (_cpu_flags_bf16() and not off)
    monkeypatch.setenv("ATE_CPU_BF16", "0")
    assert resolve_precision("bf16", "cpu") == "fp32" and resolve_precision("bf16", "cuda") == "bf16"
    with autocast(torch.device("cpu")):
        assert torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.float32
    images, _ = batch
    pack = Pack.load(tiny_pack)
    fp32 = open_backend("torch").classifier(pack, pack.manifest.generalist)(images)
    assert np.array_equal(open_backend("torch", precision="bf16").classifier(pack, pack.manifest.generalist)(images), fp32)


def test_onnx_int8_is_a_quantized_copy(tiny_pack, batch, tmp_path, monkeypatch):
    """int8: ONNX Runtime's dynamic quantization of the exported model, cached beside it."""
    monkeypatch.setattr("askexpert.onnx_export.CACHE_DIR", tmp_path)
    images, keys = batch
    pack = Pack.load(tiny_pack)
    fp32 = open_backend("onnx").classifier(pack, pack.manifest.generalist)(images)
    int8 = open_backend("onnx", precision="int8")
    out = int8.classifier(pack, pack.manifest.generalist)(images)
    assert out.shape == fp32.shape and np.isfinite(out).all() and not np.array_equal(out, fp32)
    assert np.abs(out - fp32).max() < 0.5 * np.abs(fp32).max()  # quantized, not a different model (here: 0.04)
    assert list(tmp_path.glob("onnx/*-vit-int8.onnx"))
    assert int8.experts(pack, pack.manifest.experts)(images, keys).shape == (len(keys), len(pack.manifest.classes))


def test_backend_auto_and_default_threads(monkeypatch):
    """`auto` is ONNX Runtime on a CPU and torch on CUDA (and for the precisions only torch runs);
    `threads` 0 is half the cores this process may use, at least one, read from its CPU affinity."""
    from askexpert.backends import resolve_backend
    from askexpert.hardware import default_threads

    assert resolve_backend("auto", "cpu", "auto") == "onnx"
    assert resolve_backend("auto", "cpu", "int8") == "onnx"
    assert resolve_backend("auto", "cpu", "bf16") == "torch"
    assert resolve_backend("auto", "cuda", "auto") == resolve_backend("auto", "cuda:1", "fp16") == "torch"
    assert resolve_backend("torch", "cpu", "auto") == "torch" and resolve_backend("tensorrt", "cuda", "auto") == "tensorrt"
    assert open_backend("auto").name == "onnx"
    with pytest.raises(ValueError, match="choose auto, torch, onnx or tensorrt"):
        open_backend("tflite")
    for cores, want in ((1, 1), (2, 1), (3, 1), (6, 3), (12, 6)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert default_threads() == want
        assert open_backend("onnx").threads == want  # 0 means the default, never "every core"


def test_onnx_exports_under_unique_temporary_names(tiny_pack, tmp_path):
    """Two processes exporting one model at once (an edge and a hub starting together) each write
    their own temporary file and rename it into place: the cache never holds a half-written model."""
    import subprocess
    import sys

    import onnx

    from askexpert.onnx_export import unique_tmp

    target = tmp_path / "m.onnx"
    assert len({unique_tmp(target) for _ in range(50)}) == 50 and unique_tmp(target).parent == tmp_path
    code = (
        "import sys; from pathlib import Path; from askexpert.pack import Pack; from askexpert.onnx_export import onnx_for; "
        "p = Pack.load(sys.argv[1]); print(onnx_for(p, p.manifest.generalist, 'vit', Path(sys.argv[2])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tiny_pack), str(tmp_path)], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"
    onnx.checker.check_model(paths.pop())
