"""Assemble the model pack from a work folder: fp16 safetensors, manifest, reports, test logits."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from askexpert.pack import ExpertEntry, InputSpec, Manifest, ModelEntry, Pack, TrunkEntry, write_manifest
from trainer import workfiles as files
from trainer.context import RunContext
from trainer.export import model_entry
from trainer.report_markdown import to_markdown
from trainer.results import PackReport

PACK_FILE_LIMIT = 32 * 2**20
PACK_TOTAL_LIMIT = 128 * 2**20
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
    dst = out / files.PACK_TEST_LOGITS
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    if dst.stat().st_size <= LOGITS_LIMIT:
        return {"file": files.PACK_TEST_LOGITS, "keys": sorted(arrays), "layout": "every model, full"}
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
        "file": files.PACK_TEST_LOGITS,
        "keys": sorted(keep),
        "layout": "generalists and progressive experts full; other expert families: the routed expert per image only",
    }


@dataclass
class Provenance:
    """How the pack was made, for its record: the command, the wall time over every invocation,
    the device note, the re-exporting command, and the paper's Table 6 with the recipe's differences."""

    command: str
    wall_s: float
    device_note: str = ""
    exported_by: str = ""
    table6: dict | None = None


def assemble(run: RunContext, made: Provenance, size_limit: bool = True) -> Path:
    """The pack from a work folder whose report step is done: weights, reports, logits, manifest."""
    cfg, d = run.cfg, run.data
    rep = run.report()
    einfo, pinfo = run.need("experts"), run.need("partition")
    out = Path(cfg.out)
    if out.exists():
        for p in list(out.glob("*.safetensors")) + [out / "manifest.json"]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    generalist, trunk, baselines = _generalist_entries(run, rep, out, with_trunk="compact" in einfo)
    experts, compact = _expert_entries(run, rep, out, with_compact="compact" in einfo)
    logits_info = _write_logits(out, run.work / files.TEST_LOGITS, f"generalist-{cfg.edge_shape}", pinfo["partition"], cfg.k)
    (out / files.PACK_REPORT_JSON).parent.mkdir(exist_ok=True)
    (out / files.PACK_REPORT_JSON).write_text(json.dumps(rep.to_json(), indent=2) + "\n")
    (out / files.PACK_REPORT_MD).write_text(to_markdown(rep))
    manifest = Manifest(
        name=cfg.name or f"{cfg.dataset}-S{cfg.subsets}-k{cfg.k}",
        dataset=cfg.dataset,
        classes=d.classes,
        partition=pinfo["partition"],
        subset_names=pinfo["subset_names"],
        k=cfg.k,
        tau=cfg.tau if cfg.tau is not None else rep.default_tau.tau,
        input=InputSpec(size=d.img_size, channels=d.channels, mean=d.mean, std=d.std),
        generalist=generalist,
        trunk=trunk,
        experts=experts,
        baselines=baselines,
        compact_experts=compact,
        quality=rep.quality,
        served_form=rep.served_form,
        training=_training_record(run, rep, made),
        reports={
            "json": files.PACK_REPORT_JSON,
            "markdown": files.PACK_REPORT_MD,
            "logits": logits_info,
            "table3": rep.table3.model_dump(mode="json", exclude_unset=True),
            "claims": [{"claim": c.claim, "verdict": c.verdict} for c in rep.claims],
            "generalists": {n: _top(rep, n) for n in rep.generalists},
        },
    )
    write_manifest(out, manifest)
    check_sizes(out, limited=size_limit)
    Pack.load(out)
    return out


def _top(rep: PackReport, name: str) -> dict:
    """A generalist's top-1/2/3 on the test split, for its manifest entry."""
    g = rep.generalists.get(name)
    return {"top1": g.top1, "top2": g.top2, "top3": g.top3} if g else {}


def _generalist_entries(run: RunContext, rep: PackReport, out: Path, with_trunk: bool) -> tuple[ModelEntry, TrunkEntry | None, dict]:
    """The edge generalist, the shared trunk (the expert-shaped generalist) and the baselines."""
    cfg = run.cfg
    edge, exp = cfg.edge_shape, cfg.expert_shape
    gen = ModelEntry(
        **model_entry(run.load_vit(edge, files.generalist(edge)), run.arch(edge), out, files.pack_generalist(edge)),
        metrics=_top(rep, f"generalist-{edge}"),
    )
    trunk_raw = model_entry(run.load_vit(exp, files.generalist(exp)), run.arch(exp), out, files.pack_generalist(exp))
    trunk = TrunkEntry(**trunk_raw, blocks=run.trunk_blocks(), metrics=_top(rep, f"baseline-{exp}")) if with_trunk else None
    baselines = {exp: ModelEntry(**trunk_raw, metrics=_top(rep, f"baseline-{exp}"))}
    for s in cfg.baseline_shapes:
        if s not in baselines:
            raw = model_entry(run.load_vit(s, files.generalist(s)), run.arch(s), out, files.pack_baseline(s))
            baselines[s] = ModelEntry(**raw, metrics=_top(rep, f"baseline-{s}"))
    return gen, trunk, baselines


def _expert_entries(run: RunContext, rep: PackReport, out: Path, with_compact: bool) -> tuple[list[ExpertEntry], list[ExpertEntry]]:
    """Seed 0's progressive experts (with their controls' scores) and the compact experts."""
    cfg, exp = run.cfg, run.cfg.expert_shape
    experts, compact = [], []
    for key, e in rep.experts.items():
        subset = [int(s) for s in key.split("-")]
        metrics = {"target_top1": e.progressive.target.values[0], "overall_top1": e.progressive.overall.values[0]}
        for kind in ("static", "uniform"):
            metrics |= {f"{kind}_target_top1": e.kind(kind).target.values[0], f"{kind}_overall_top1": e.kind(kind).overall.values[0]}
        raw = model_entry(run.load_vit(exp, files.expert("progressive", key, 0)), run.arch(exp), out, files.pack_expert(key))
        experts.append(ExpertEntry(**raw, subset=subset, metrics=metrics))
        if with_compact:
            tail = run.load_tail(files.compact_expert(key))
            raw = model_entry(tail, run.arch(exp), out, files.pack_compact_expert(key), kind="tail", tail_blocks=cfg.tail_blocks)
            compact.append(ExpertEntry(**raw, subset=subset, metrics={"target_top1": e.compact.target, "overall_top1": e.compact.overall}))
    return experts, compact


def _training_record(run: RunContext, rep: PackReport, made: Provenance) -> dict:
    """The manifest's `training`: how, where and from what the pack was trained."""
    cfg = run.cfg
    fits = {n: run.info(n) for n in ("teacher", "prune", "baselines", "subset-teachers", "experts")}
    return {
        "command": made.command,
        "wall_s": round(made.wall_s, 1),
        "device": device_words(run.device, torch.get_num_threads()) + (f"; {made.device_note}" if made.device_note else ""),
        "torch": torch.__version__,
        "recipe": {k: v for k, v in run.recipe().items() if k not in ("work", "out")},  # no paths of the training machine
        "teacher_recipe": cfg.teacher_recipe,
        "static_definition": "same init, data, teacher labels, epochs and optimiser as progressive; "
        "target-subset weight W constant from the first step",
        "uniform_definition": "the same again with weight 1 for every sample (no specialisation by weighting)",
        "experts_in_pack": "progressive, seed 0; compact_experts: tails on the shared trunk (a serving option)",
        "default_tau": rep.default_tau.model_dump(mode="json"),
        "loss_normalisation": "sum_i w_i [CE(y)/2 + CE(teacher)/2] / batch size",
        "step_wall_s": {n: _walls(i) for n, i in fits.items() if i},
        **({"exported_by": made.exported_by} if made.exported_by else {}),
        **({"table6": made.table6} if made.table6 else {}),
        "notes": "the paper's depth is 12; this pack's depth, epochs and sample counts are in `recipe`",
    }


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
