"""Evaluation tables on the test split: the paper's Tables 2/5 (generalists' top-k, recall gaps),
Table 3 (static vs progressive vs full experts, target and overall accuracy) and a tau sweep of the
whole system (edge generalist + routed experts), as JSON and Markdown."""

from __future__ import annotations

import numpy as np

from askexpert.models import ViTArch, build_vit
from askexpert.routing import route, softmax

TAUS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def topk_acc(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return round(100.0 * float((top == y[:, None]).any(axis=1).mean()), 2)


def acc(logits: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    ok = logits.argmax(1) == y
    if mask is not None:
        ok = ok[mask]
    return round(100.0 * float(ok.mean()), 2) if ok.size else float("nan")


def n_params(arch: ViTArch) -> int:
    return sum(p.numel() for p in build_vit(arch).parameters())


def routed_keys(edge_logits: np.ndarray, partition: list[int], k: int) -> list[str]:
    top = np.argsort(-edge_logits, axis=1, kind="stable")[:, :k]
    return [route(t, partition) for t in top]


def system_sweep(logits: dict, y: np.ndarray, edge: str, partition: list[int], k: int, keys: list[str]) -> list[dict]:
    """Algorithm 1 simulated on the test split for each tau: offload share and final accuracy."""
    probs = softmax(logits[edge].astype(np.float64))
    conf, edge_pred = probs.max(1), probs.argmax(1)
    rk = np.array(routed_keys(logits[edge], partition, k))
    rows = []
    for tau in TAUS:
        off = conf < tau
        row = {"tau": tau, "offload_pct": round(100.0 * float(off.mean()), 2), "edge_only": acc(logits[edge], y)}
        for kind in ("progressive", "static", "full"):
            if not all(f"{kind}-{kk}" in logits for kk in set(rk[off])):
                continue
            pred = edge_pred.copy()
            for kk in set(rk[off]):
                m = off & (rk == kk)
                pred[m] = logits[f"{kind}-{kk}"][m].argmax(1)
            row[f"system_{kind}"] = round(100.0 * float((pred == y).mean()), 2)
        for b in [n for n in logits if n.startswith("baseline-")]:
            pred = np.where(off, logits[b].argmax(1), edge_pred)
            row[f"coinference_{b.split('-', 1)[1]}"] = round(100.0 * float((pred == y).mean()), 2)
        rows.append(row)
    return rows


def build_report(run, logits: dict, y: np.ndarray, pinfo: dict, einfo: dict) -> dict:
    cfg = run.cfg
    partition = pinfo["partition"]
    classes = np.array(partition)[y]  # subset of each test sample
    gens = {}
    for name, lg in logits.items():
        if name.startswith(("generalist-", "baseline-", "teacher-")):
            shape = name.split("-", 1)[1]
            arch = run.arch(shape)
            top = {f"top{k}": topk_acc(lg, y, k) for k in (1, 2, 3)}
            gens[name] = {"shape": shape, "depth": arch.depth, "embed_dim": arch.embed_dim, "heads": arch.num_heads,
                          "mlp": int(arch.embed_dim * arch.mlp_ratio), "params": n_params(arch), **top,
                          "gap_2_1": round(top["top2"] - top["top1"], 2), "gap_3_1": round(top["top3"] - top["top1"], 2)}  # fmt: skip
    experts: dict = {}
    gen_name = f"baseline-{cfg.expert_shape}"
    for key in einfo["keys"]:
        sub = [int(s) for s in key.split("-")]
        mask = np.isin(classes, sub)
        row = {"target_n": int(mask.sum())}
        if gen_name in logits:
            row["generalist_target"] = acc(logits[gen_name], y, mask)
        for kind in ("progressive", "static", "full"):
            if f"{kind}-{key}" in logits:
                row[f"{kind}_target"] = acc(logits[f"{kind}-{key}"], y, mask)
                row[f"{kind}_overall"] = acc(logits[f"{kind}-{key}"], y)
        experts[key] = row

    def mean(col: str, keys=None) -> float | None:
        vals = [experts[k][col] for k in (keys or experts) if col in experts[k]]
        return round(float(np.mean(vals)), 2) if vals else None

    full_keys = einfo.get("full_keys", [])
    table3 = {
        "model": cfg.expert_shape, "S": cfg.subsets, "k": cfg.k, "n_experts": len(experts),
        "generalist_overall": gens.get(gen_name, {}).get("top1"),
        "generalist_target": mean("generalist_target"),
        **{f"{kind}_{w}": mean(f"{kind}_{w}") for kind in ("static", "progressive") for w in ("target", "overall")},
    }
    compact_vs_full = None
    if full_keys:
        compact_vs_full = {
            "experts": full_keys,
            **{f"{kind}_{w}": mean(f"{kind}_{w}", full_keys) for kind in ("progressive", "full") for w in ("target", "overall")},
            "generalist_target": mean("generalist_target", full_keys),
        }
    edge = f"generalist-{cfg.edge_shape}"
    sweep = system_sweep(logits, y, edge, partition, cfg.k, einfo["keys"]) if edge in logits else []
    rep = {
        "dataset": cfg.dataset, "split": "test", "n_test": int(len(y)), "partition": partition,
        "subset_names": pinfo["subset_names"], "partition_how": pinfo["how"],
        "val_topk_within_one_subset": pinfo.get("val_topk_within_one_subset"),
        "generalists": gens, "experts": experts, "table3": table3, "compact_vs_full": compact_vs_full,
        "system_sweep": sweep,
        "expert_training": {"samples": einfo["samples"], "tail_blocks": einfo["tail_blocks"],
                            "trunk_blocks": einfo["trunk_blocks"], "teacher_recipe": einfo["teacher_recipe"],
                            "W": cfg.max_weight, "omega_schedule": cfg.omega_schedule},
    }  # fmt: skip
    rep["markdown"] = to_markdown(rep)
    return rep


def _f(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def to_markdown(rep: dict) -> str:
    L = [f"# Model pack report: {rep['dataset']} (test split, {rep['n_test']} images)", ""]
    L += ["## Generalists (Tables 2 and 5)", "",
          "| model | layers | dim | MLP | heads | params | top-1 | top-2 | top-3 | gap 2-1 | gap 3-1 |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, g in rep["generalists"].items():
        L.append(f"| {name} | {g['depth']} | {g['embed_dim']} | {g['mlp']} | {g['heads']} | {g['params'] / 1e6:.2f}M | "
                 f"{_f(g['top1'])} | {_f(g['top2'])} | {_f(g['top3'])} | {_f(g['gap_2_1'])} | {_f(g['gap_3_1'])} |")  # fmt: skip
    t = rep["table3"]
    L += ["", f"## Experts, static vs progressive (Table 3): mean over the {t['n_experts']} experts", "",
          "| model (gen. acc) | S | target static | target progr. | overall static | overall progr. | gen. on target |",
          "| --- | --- | --- | --- | --- | --- | --- |",
          f"| {t['model']} ({_f(t['generalist_overall'])}) | {t['S']} | {_f(t['static_target'])} | {_f(t['progressive_target'])} | "
          f"{_f(t['static_overall'])} | {_f(t['progressive_overall'])} | {_f(t['generalist_target'])} |"]  # fmt: skip
    c = rep.get("compact_vs_full")
    if c:
        L += ["", f"## Compact (shared trunk + own tail) vs full experts, on {', '.join(c['experts'])}", "",
              "| expert kind | target | overall |", "| --- | --- | --- |",
              f"| tail (progressive, in the pack) | {_f(c['progressive_target'])} | {_f(c['progressive_overall'])} |",
              f"| full {t['model']} (progressive) | {_f(c['full_target'])} | {_f(c['full_overall'])} |",
              f"| generalist {t['model']} | {_f(c['generalist_target'])} | {_f(t['generalist_overall'])} |"]  # fmt: skip
    L += ["", "## Per expert (accuracy %, target = test images of the expert's subsets)", "",
          "| expert | n target | gen. target | static target | progr. target | full target | static overall | progr. overall | full overall |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for key, e in rep["experts"].items():
        L.append(f"| {key} | {e['target_n']} | {_f(e.get('generalist_target'))} | {_f(e.get('static_target'))} | "
                 f"{_f(e.get('progressive_target'))} | {_f(e.get('full_target'))} | {_f(e.get('static_overall'))} | "
                 f"{_f(e.get('progressive_overall'))} | {_f(e.get('full_overall'))} |")  # fmt: skip
    if rep["system_sweep"]:
        cols = [k for k in rep["system_sweep"][0] if k != "tau"]
        L += ["", "## Whole system on the test split (Algorithm 1, simulated from logits)", "",
              "| tau | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
        for r in rep["system_sweep"]:
            L.append(f"| {r['tau']} | " + " | ".join(_f(r.get(c)) for c in cols) + " |")
    L += ["", f"Partition: {rep['partition']} ({rep['partition_how']}); subsets: {rep['subset_names']}.",
          f"Validation samples whose top-k stays in one subset: {_f(rep['val_topk_within_one_subset'])}.",
          f"Expert training: {rep['expert_training']}.", ""]  # fmt: skip
    return "\n".join(L)
