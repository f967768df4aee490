"""bench/profile_device.py at a tiny budget on the tiny pack: every model timed, energy's source or
why none, and the file readable by the cost model."""

from __future__ import annotations

import json
import shutil

from bench.profile_device import main
from evaluation.costmodel import Profile


def test_profile_every_model_of_the_pack(tiny_pack, tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(tiny_pack, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["training"] = {"recipe": {"teacher_shape": "6H"}}  # a teacher shape to time, as the trainer records it
    (pack / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "profile.json"
    args = ["--pack", str(pack), "--batches", "1,3", "--repeats", "2", "--min-seconds", "0", "--backend", "torch", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    prof = json.loads(out.read_text())
    assert set(prof["models"]) == {"3H", "4H", "6H", "4H compact expert"}
    assert "random weights" in prof["model_notes"]["6H"]
    assert all(list(m["latency_ms"]) == ["1", "3"] for m in prof["models"].values())
    assert (prof["backend"], prof["precision"], prof["threads"]) == ("torch", "fp32", 1)
    # energy: measured with its source named, or left out with each reader's reason
    assert bool(prof["energy_source"]) != bool(prof["energy_unavailable"])
    assert all(("energy_mj" in m) == bool(prof["energy_source"]) for m in prof["models"].values())
    p = Profile.load(out)
    assert p.latency_ms("4H compact expert", 2) > 0
    assert main([*args, "--out", str(out), "--power-w", "12.5", "--power-source", "the board's rating"]) == 0
    p = Profile.load(out)
    assert p.power_w == 12.5 and p.energy_mj("3H", 1) is not None
