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


def _write_logits(out: Path, all_path: Path, edge: str, partition: list[int], k: int) -> dict:
    """The test logits for the offline tau sweep, fp16, under LOGITS_LIMIT.

    Everything if it fits; else generalists and progressive experts in full, and for every other
    expert family (static, uniform, compact, subset teachers) only each test image's routed expert
    ('<family>-routed'), with 'routed-key' naming the routed expert per image."""
    from askexpert.routing import decide

    with np.load(all_path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    dst = out / "eval" / "logits-test.npz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    if dst.stat().st_size <= LOGITS_LIMIT:
        return {"file": "eval/logits-test.npz", "keys": sorted(arrays), "layout": "every model, full"}
    rk = decide(arrays[edge].astype(np.float32), partition, k).expert.astype(str)
    families = ("static", "uniform", "compact", "subset-teacher")
    keep = {n: a for n, a in arrays.items() if not n.startswith(tuple(f + "-" for f in families))}
    for fam in families:
        per_key = {n[len(fam) + 1 :]: a for n, a in arrays.items() if n.startswith(fam + "-")}
        if not per_key:
            continue
        routed = np.full_like(arrays[edge], np.nan)
        for key in set(rk) & set(per_key):
            routed[rk == key] = per_key[key][rk == key]
        keep[f"{fam}-routed"] = routed
    keep["routed-key"] = rk.astype("U16")
    np.savez_compressed(dst, **keep)
    return {
        "file": "eval/logits-test.npz",
        "keys": sorted(keep),
        "layout": "generalists and progressive experts full; other expert families: the routed expert per image only",
    }


def assemble(
    run: Run, command: str, wall_s: float, device_note: str = "", exported_by: str = "", size_limit: bool = True, table6: dict | None = None
) -> Path:
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
    gen_entry = ModelEntry(
        **model_entry(run.load_vit(edge, f"generalist-{edge}.safetensors"), run.arch(edge), out, f"generalist-{edge}.safetensors"),
        metrics=metrics(f"generalist-{edge}"),
    )
    trunk_raw = model_entry(run.load_vit(exp, f"generalist-{exp}.safetensors"), run.arch(exp), out, f"generalist-{exp}.safetensors")
    trunk = TrunkEntry(**trunk_raw, blocks=run.trunk_blocks(), metrics=metrics(f"baseline-{exp}")) if "compact" in einfo else None
    baselines = {exp: ModelEntry(**trunk_raw, metrics=metrics(f"baseline-{exp}"))}
    for s in cfg.baseline_shapes:
        if s not in baselines:
            baselines[s] = ModelEntry(
                **model_entry(run.load_vit(s, f"generalist-{s}.safetensors"), run.arch(s), out, f"baseline-{s}.safetensors"),
                metrics=metrics(f"baseline-{s}"),
            )
    experts, compact = [], []
    for key in einfo["keys"]:
        e = rep["experts"][key]
        m = {kind: {w: e[kind][w]["values"][0] for w in ("target", "overall")} for kind in ("progressive", "static", "uniform")}
        raw = model_entry(run.load_vit(exp, run.expert_rel("progressive", key, 0)), run.arch(exp), out, f"expert-{key}.safetensors")
        experts.append(
            ExpertEntry(
                **raw,
                subset=[int(s) for s in key.split("-")],
                metrics={
                    "target_top1": m["progressive"]["target"],
                    "overall_top1": m["progressive"]["overall"],
                    "static_target_top1": m["static"]["target"],
                    "static_overall_top1": m["static"]["overall"],
                    "uniform_target_top1": m["uniform"]["target"],
                    "uniform_overall_top1": m["uniform"]["overall"],
                },
            )
        )
        if "compact" in einfo:
            tail = run.load_tail(f"experts/compact/expert-{key}.safetensors")
            raw = model_entry(tail, run.arch(exp), out, f"compact-expert-{key}.safetensors", kind="tail", tail_blocks=cfg.tail_blocks)
            compact.append(
                ExpertEntry(
                    **raw,
                    subset=[int(s) for s in key.split("-")],
                    metrics={"target_top1": e["compact"]["target"], "overall_top1": e["compact"]["overall"]},
                )
            )
    logits_info = _write_logits(out, run.work / "eval/logits-test-all.npz", f"generalist-{edge}", pinfo["partition"], cfg.k)
    report = {k: v for k, v in rep.items() if k != "markdown"}
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports/report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "reports/report.md").write_text(rep["markdown"])
    fits = {n: run.info(n) for n in ("teacher", "prune", "baselines", "subset-teachers", "experts")}
    training = {
        "command": command,
        "wall_s": round(wall_s, 1),
        "device": device_words(run.device, torch.get_num_threads()) + (f"; {device_note}" if device_note else ""),
        "torch": torch.__version__,
        "recipe": {k: v for k, v in run.recipe().items() if k not in ("work", "out")},  # no paths of the training machine
        "teacher_recipe": cfg.teacher_recipe,
        "static_definition": "same init, data, teacher labels, epochs and optimiser as progressive; "
        "target-subset weight W constant from the first step",
        "uniform_definition": "the same again with weight 1 for every sample (no specialisation by weighting)",
        "experts_in_pack": "progressive, seed 0; compact_experts: tails on the shared trunk (a serving option)",
        "default_tau": rep["default_tau"],
        "loss_normalisation": "sum_i w_i [CE(y)/2 + CE(teacher)/2] / batch size",
        "step_wall_s": {n: _walls(i) for n, i in fits.items() if i},
        **({"exported_by": exported_by} if exported_by else {}),
        **({"table6": table6} if table6 else {}),
        "notes": "the paper's depth is 12; this pack's depth, epochs and sample counts are in `recipe`",
    }
    manifest = Manifest(
        name=cfg.name or f"{cfg.dataset}-S{cfg.subsets}-k{cfg.k}",
        dataset=cfg.dataset,
        classes=d.classes,
        partition=pinfo["partition"],
        subset_names=pinfo["subset_names"],
        k=cfg.k,
        tau=cfg.tau if cfg.tau is not None else rep["default_tau"]["tau"],
        input=InputSpec(size=d.img_size, channels=d.channels, mean=d.mean, std=d.std),
        generalist=gen_entry,
        trunk=trunk,
        experts=experts,
        baselines=baselines,
        compact_experts=compact,
        training=training,
        reports={
            "json": "reports/report.json",
            "markdown": "reports/report.md",
            "logits": logits_info,
            "table3": rep["table3"],
            "claims": [{k: c[k] for k in ("claim", "verdict")} for c in rep["claims"]],
            "generalists": {n: metrics(n) for n in gens},
        },
    )
    write_manifest(out, manifest)
    check_sizes(out, limited=size_limit)
    Pack.load(out)
    return out


def _walls(info: dict) -> dict:
    return {k: v["wall_s"] for k, v in info.items() if isinstance(v, dict) and "wall_s" in v}


def check_sizes(root: Path, limited: bool = True) -> dict:
    """File sizes of a pack; with `limited`, fail beyond the repository's limits for a committed pack."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in files}
    if not limited:
        return {"total_mib": round(sum(sizes.values()) / 2**20, 2), "files": sizes}
    big = {k: v for k, v in sizes.items() if v > PACK_FILE_LIMIT}
    total = sum(sizes.values())
    if big:
        raise SystemExit(f"pack files over {PACK_FILE_LIMIT >> 20} MiB: {big}")
    if total > PACK_TOTAL_LIMIT:
        raise SystemExit(f"pack is {total / 2**20:.1f} MiB, over {PACK_TOTAL_LIMIT >> 20} MiB")
    return {"total_mib": round(total / 2**20, 2), "files": sizes}
