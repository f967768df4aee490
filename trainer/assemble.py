"""Assemble the model pack from a work folder: fp16 safetensors, manifest, reports, test logits."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from askexpert.pack import ExpertEntry, InputSpec, Manifest, ModelEntry, Pack, TrunkEntry, write_manifest
from trainer.export import model_entry
from trainer.pipeline import PACK_FILE_LIMIT, PACK_TOTAL_LIMIT, Run

LOGITS_LIMIT = 4 * 2**20


def device_words(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {threads} threads ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def _write_logits(out: Path, all_path: Path, keys: list[str], edge: str, partition: list[int], k: int) -> dict:
    """The test logits for the offline tau sweep, fp16, under LOGITS_LIMIT.

    Everything if it fits; else generalists and progressive experts in full, and for static/full
    experts only each test image's routed expert ('static-routed', 'full-routed', NaN rows where
    that expert kind was not trained), with 'routed-key' naming the routed expert per image."""
    from trainer.report import routed_keys

    with np.load(all_path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    dst = out / "eval" / "logits-test.npz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    if dst.stat().st_size <= LOGITS_LIMIT:
        return {"file": "eval/logits-test.npz", "keys": sorted(arrays), "layout": "every model, full"}
    rk = np.array(routed_keys(arrays[edge].astype(np.float32), partition, k))
    keep = {n: a for n, a in arrays.items() if not n.startswith(("static-", "full-"))}
    for kind in ("static", "full"):
        if not any(n.startswith(kind + "-") for n in arrays):
            continue
        routed = np.full_like(arrays[edge], np.nan)
        for key in set(rk):
            if f"{kind}-{key}" in arrays:
                m = rk == key
                routed[m] = arrays[f"{kind}-{key}"][m]
        keep[f"{kind}-routed"] = routed
    keep["routed-key"] = rk.astype("U16")
    np.savez_compressed(dst, **keep)
    return {"file": "eval/logits-test.npz", "keys": sorted(keep),
            "layout": "generalists and progressive experts full; static/full experts: routed expert per image only"}  # fmt: skip


def assemble(run: Run, command: str, wall_s: float, pack_full_experts: bool = True, device_note: str = "",
             exported_by: str = "") -> Path:
    cfg, d = run.cfg, run.data
    rep = run.step_report()
    einfo, pinfo = run.info("experts"), run.info("partition")
    out = Path(cfg.out)
    if out.exists():
        for p in list(out.glob("*.safetensors")) + [out / "manifest.json"]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    gens = rep["generalists"]

    def metrics(name: str) -> dict:
        g = gens.get(name, {})
        return {k: g[k] for k in ("top1", "top2", "top3") if k in g}

    edge, exp = cfg.edge_shape, cfg.expert_shape
    gen_entry = ModelEntry(**model_entry(run.load_vit(edge, f"generalist-{edge}.safetensors"), run.arch(edge), out,
                                         f"generalist-{edge}.safetensors"), metrics=metrics(f"generalist-{edge}"))  # fmt: skip
    trunk_raw = model_entry(run.load_vit(exp, f"generalist-{exp}.safetensors"), run.arch(exp), out, f"generalist-{exp}.safetensors")
    trunk = TrunkEntry(**trunk_raw, blocks=run.trunk_blocks(), metrics=metrics(f"baseline-{exp}"))
    baselines = {exp: ModelEntry(**trunk_raw, metrics=metrics(f"baseline-{exp}"))}
    for s in cfg.baseline_shapes:
        if s not in baselines:
            baselines[s] = ModelEntry(**model_entry(run.load_vit(s, f"generalist-{s}.safetensors"), run.arch(s), out,
                                                    f"baseline-{s}.safetensors"), metrics=metrics(f"baseline-{s}"))  # fmt: skip
    experts = []
    for key in einfo["keys"]:
        e = rep["experts"][key]
        tail = run.load_tail(f"experts/progressive/expert-{key}.safetensors")
        raw = model_entry(tail, run.arch(exp), out, f"expert-{key}.safetensors", kind="tail", tail_blocks=cfg.tail_blocks)
        experts.append(ExpertEntry(**raw, subset=[int(s) for s in key.split("-")],
                                   metrics={"target_top1": e.get("progressive_target"), "overall_top1": e.get("progressive_overall"),
                                            "static_target_top1": e.get("static_target"), "static_overall_top1": e.get("static_overall")}))  # fmt: skip
    used = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    full, skipped = [], []
    for key in einfo["full_keys"] if pack_full_experts else []:
        size = (run.work / f"experts/full/expert-{key}.safetensors").stat().st_size // 2  # fp32 -> fp16
        if used + size + 6 * 2**20 > PACK_TOTAL_LIMIT:  # keep 6 MiB for manifest, reports, logits, margin
            skipped.append(key)
            continue
        e = rep["experts"][key]
        raw = model_entry(run.load_vit(exp, f"experts/full/expert-{key}.safetensors"), run.arch(exp), out,
                          f"full-expert-{key}.safetensors")  # fmt: skip
        full.append(ExpertEntry(**raw, subset=[int(s) for s in key.split("-")],
                                metrics={"target_top1": e.get("full_target"), "overall_top1": e.get("full_overall")}))  # fmt: skip
        used += (out / raw["file"]).stat().st_size
    logits_info = _write_logits(out, run.work / "eval/logits-test-all.npz", einfo["keys"], f"generalist-{edge}",
                                pinfo["partition"], cfg.k)  # fmt: skip
    report = {k: v for k, v in rep.items() if k != "markdown"}
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports/report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "reports/report.md").write_text(rep["markdown"])
    fits = {n: run.info(n) for n in ("teacher", "prune", "baselines", "experts")}
    training = {
        "command": command,
        "wall_s": round(wall_s, 1),
        "device": device_words(run.device, torch.get_num_threads()) + (f"; {device_note}" if device_note else ""),
        "torch": torch.__version__,
        "recipe": run.recipe(),
        "teacher_recipe": cfg.teacher_recipe,
        "static_definition": "same init, data, teacher labels, epochs and optimiser as progressive; "
                             "target-subset weight W constant from the first step",
        "loss_normalisation": "sum_i w_i [CE(y)/2 + CE(teacher)/2] / batch size",
        "step_wall_s": {n: _walls(i) for n, i in fits.items() if i},
        "full_experts_in_pack": [e.key for e in full],
        "full_experts_trained_not_packed": skipped,
        **({"exported_by": exported_by} if exported_by else {}),
        "notes": "paper default depth is 12; this pack's depth, epochs and sample counts are in `recipe`",
    }
    manifest = Manifest(
        name=cfg.name or f"{cfg.dataset}-S{cfg.subsets}-k{cfg.k}",
        dataset=cfg.dataset,
        classes=d.classes,
        partition=pinfo["partition"],
        subset_names=pinfo["subset_names"],
        k=cfg.k,
        tau=cfg.tau,
        input=InputSpec(size=d.img_size, channels=d.channels, mean=d.mean, std=d.std),
        generalist=gen_entry,
        trunk=trunk,
        experts=experts,
        baselines=baselines,
        full_experts=full,
        training=training,
        reports={"json": "reports/report.json", "markdown": "reports/report.md", "logits": logits_info,
                 "table3": rep["table3"], "compact_vs_full": rep["compact_vs_full"],
                 "generalists": {n: metrics(n) for n in gens}},  # fmt: skip
    )
    write_manifest(out, manifest)
    check_sizes(out)
    Pack.load(out)
    return out


def _walls(info: dict) -> dict:
    return {k: v["wall_s"] for k, v in info.items() if isinstance(v, dict) and "wall_s" in v}


def check_sizes(root: Path) -> dict:
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in files}
    big = {k: v for k, v in sizes.items() if v > PACK_FILE_LIMIT}
    total = sum(sizes.values())
    if big:
        raise SystemExit(f"pack files over 16 MiB: {big}")
    if total > PACK_TOTAL_LIMIT:
        raise SystemExit(f"pack is {total / 2**20:.1f} MiB, over 48 MiB")
    return {"total_mib": round(total / 2**20, 2), "files": sizes}
