"""ONNX export of every model in a pack, checked against PyTorch with onnxruntime (CPU).

Full ViTs (generalist, baselines, full experts) take images (N, C, H, W); the shared trunk takes
images and returns tokens; tail experts take the trunk's tokens (N, T, D). The batch axis is dynamic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from askexpert.onnx_export import export_onnx
from askexpert.pack import Pack


def _check(model: torch.nn.Module, path: Path, x: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def export_pack_onnx(pack_dir: str | Path, out_dir: str | Path, batch: int = 3, atol: float = 1e-3) -> dict:
    """Write <name>.onnx for every model of the pack into out_dir; returns {name: max abs diff}."""
    pack = Pack.load(pack_dir)
    m = pack.manifest
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, m.input.channels, m.input.size, m.input.size, generator=g)
    x2 = torch.randn(batch + 2, m.input.channels, m.input.size, m.input.size, generator=g)  # another batch size
    diffs: dict[str, float] = {}
    vits = {Path(m.generalist.file).stem: m.generalist}
    vits.update({Path(e.file).stem: e for e in m.baselines.values()})
    vits.update({Path(e.file).stem: e for e in m.experts + m.full_experts if e.kind == "vit"})
    for name, entry in vits.items():
        model = pack.load_vit(entry)
        export_onnx(model, x, out / f"{name}.onnx", "images", "logits")
        diffs[name] = max(_check(model, out / f"{name}.onnx", x), _check(model, out / f"{name}.onnx", x2))
    if m.trunk is not None:
        trunk = pack.load_trunk()
        export_onnx(trunk, x, out / "trunk.onnx", "images", "tokens")
        diffs["trunk"] = max(_check(trunk, out / "trunk.onnx", x), _check(trunk, out / "trunk.onnx", x2))
        with torch.no_grad():
            tok, tok2 = trunk(x), trunk(x2)
        for e in [e for e in m.experts + m.compact_experts if e.kind == "tail"]:
            tail = pack.load_expert(e)
            p = out / f"{Path(e.file).stem}.onnx"
            export_onnx(tail, tok, p, "tokens", "logits")
            diffs[p.stem] = max(_check(tail, p, tok), _check(tail, p, tok2))
    bad = {k: v for k, v in diffs.items() if v > atol}
    (out / "onnx-parity.json").write_text(json.dumps({"atol": atol, "max_abs_diff": diffs}, indent=2))
    if bad:
        raise RuntimeError(f"ONNX outputs differ from PyTorch beyond {atol}: {bad}")
    return diffs
