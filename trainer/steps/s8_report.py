"""Step 8, report: test-split logits of every model (fp16-rounded weights, as in the pack),
validation logits for the choices made on validation (tau, the served expert form), and the tables and claims of
`trainer.report`; the test logits are kept for the pack."""

from __future__ import annotations

import numpy as np
import torch

from trainer import distributed as dist
from trainer import workfiles as files
from trainer.context import RunContext, as_fp16
from trainer.engine import predict
from trainer.results import PackReport
from trainer.served_form import TIMING_FRAMES, time_per_frame_ms
from trainer.steps.s7_experts import EXPERT_KINDS


def run(ctx: RunContext) -> PackReport:
    if (done := ctx.info("report")) is not None and (ctx.work / files.TEST_LOGITS).is_file():
        return PackReport.model_validate(done)
    from trainer.report import Evaluation, build_report

    d = ctx.data
    ctx.need("baselines")
    einfo = ctx.need("experts")
    test, val = _generalist_logits(ctx, einfo["keys"])
    seeds = _expert_logits(ctx, einfo, val)
    per_frame_ms = {}
    if "compact" in einfo:
        test |= _compact_logits(ctx, einfo["keys"], d.x_test)
        val |= _compact_logits(ctx, einfo["keys"], d.x_val)
        per_frame_ms = _per_frame_ms(ctx, einfo["keys"][0])
    np_test = {k: v.numpy().astype(np.float32) for k, v in test.items()} | seeds[0]
    np_val = {k: v.numpy().astype(np.float32) for k, v in val.items()}
    rep = build_report(ctx, Evaluation(np_test, d.y_test.numpy(), seeds, np_val, d.y_val.numpy(), per_frame_ms))
    (ctx.work / files.TEST_LOGITS).parent.mkdir(exist_ok=True)
    if dist.is_main():
        np.savez_compressed(ctx.work / files.TEST_LOGITS, labels=d.y_test.numpy(), **{k: v.astype(np.float16) for k, v in np_test.items()})
    ctx.set_info("report", rep.to_json())
    return rep


def _generalist_logits(ctx: RunContext, keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Test and validation logits of the edge model, the baselines, the teacher and (test only)
    the subset teachers, with fp16-rounded weights as in the pack."""
    cfg, d = ctx.cfg, ctx.data
    gens = {f"generalist-{cfg.edge_shape}": ctx.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))}
    for s in cfg.baseline_shapes:
        gens[f"baseline-{s}"] = ctx.load_vit(s, files.generalist(s))
    if cfg.teacher_shape not in cfg.baseline_shapes:  # else the baseline of that shape is the teacher
        gens[f"teacher-{cfg.teacher_shape}"] = ctx.load_vit(cfg.teacher_shape, files.TEACHER)
    if cfg.teacher_recipe == "per-subset":
        for key in keys:
            gens[f"subset-teacher-{key}"] = ctx.load_vit(cfg.teacher_shape, ctx.expert_teacher_rel(key))
    test: dict[str, torch.Tensor] = {}
    val: dict[str, torch.Tensor] = {}
    for name, m in gens.items():
        m16 = as_fp16(m)
        test[name] = ctx.logits(m16, d.x_test)
        if not name.startswith("subset-teacher-"):
            val[name] = ctx.logits(m16, d.x_val)
    return test, val


def _expert_logits(ctx: RunContext, einfo: dict, val: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """Per seed, every expert's test logits; an expert trained with fewer seeds (busy_experts)
    stands in with its seed 0, and the report says which experts vary. Seed 0's progressive
    experts' validation logits go into `val` (for the choice of tau)."""
    cfg, d = ctx.cfg, ctx.data
    seeds: list[dict[str, np.ndarray]] = []
    per_expert = einfo.get("seeds_per_expert") or {k: einfo["seeds"] for k in einfo["keys"]}
    for s in einfo["seeds"]:
        per: dict[str, np.ndarray] = {}
        for kind in EXPERT_KINDS:
            for key in einfo["keys"]:
                if s not in per_expert[key]:
                    per[f"{kind}-{key}"] = seeds[0][f"{kind}-{key}"]
                    continue
                m = as_fp16(ctx.load_vit(cfg.expert_shape, files.expert(kind, key, s)))
                per[f"{kind}-{key}"] = ctx.logits(m, d.x_test).numpy()
                if s == 0 and kind == "progressive":
                    val[f"{kind}-{key}"] = ctx.logits(m, d.x_val)
        seeds.append(per)
    return seeds


def _trunk(ctx: RunContext) -> torch.nn.Module:
    """The shared trunk as in the pack (the expert-shaped generalist, fp16-rounded)."""
    return as_fp16(ctx.load_vit(ctx.cfg.expert_shape, files.generalist(ctx.cfg.expert_shape))).to(ctx.device)


def _compact_logits(ctx: RunContext, keys: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of the compact experts on `x`, through the shared trunk's tokens."""
    tokens = predict(ctx.trunk_fn(_trunk(ctx)), x, 512, ctx.device)
    out = {}
    for key in keys:
        tail = as_fp16(ctx.load_tail(files.compact_expert(key))).to(ctx.device)
        out[f"compact-{key}"] = predict(tail, tokens, 512, ctx.device)
    return out


@torch.inference_mode()
def _per_frame_ms(ctx: RunContext, key: str) -> dict[str, float]:
    """The time per frame of one expert of each form (`key`'s) on validation frames, for the
    served form's tie-break: the whole ViT, and the shared trunk with its tail."""
    whole = as_fp16(ctx.load_vit(ctx.cfg.expert_shape, files.expert("progressive", key, 0))).to(ctx.device)
    trunk, tail = ctx.trunk_fn(_trunk(ctx)), as_fp16(ctx.load_tail(files.compact_expert(key))).to(ctx.device)
    x = ctx.data.x_val[:TIMING_FRAMES].to(ctx.device)
    return {"full": time_per_frame_ms(whole, x), "compact": time_per_frame_ms(lambda f: tail(trunk(f)), x)}
