"""The pack report as people read it (reports/report.md), section by section."""

from __future__ import annotations

from trainer.results import KINDS, PackReport, Stats


def _f(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, Stats):
        return f"{v.mean:.2f} ± {v.std:.2f}" if len(v.values) > 1 else f"{v.mean:.2f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def claims_section(rep: PackReport) -> list[str]:
    L = [
        f"# Model pack report: {rep.dataset} (test split, {rep.n_test} images)",
        "",
        f"Experts: {rep.expert_training}.",
        "",
        "## Claims",
        "",
        "| claim | paper | ours (pt, mean ± std over seeds) | target (pt) | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in rep.claims:
        note = f" ({c.note})" if c.note else ""
        L.append(f"| {c.claim} | {c.paper} | {_f(c.ours)} | > {c.target_pt:g} | **{c.verdict}**{note} |")
    return L


def generalists_section(rep: PackReport) -> list[str]:
    L = [
        "",
        "## Generalists (Tables 2 and 5)",
        "",
        "| model | layers | dim | MLP | heads | params | top-1 | top-2 | top-3 | gap 2-1 | gap 3-1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, g in rep.generalists.items():
        L.append(
            f"| {name} | {g.depth} | {g.embed_dim} | {g.mlp} | {g.heads} | {g.params / 1e6:.2f}M | "
            f"{_f(g.top1)} | {_f(g.top2)} | {_f(g.top3)} | {_f(g.gap_2_1)} | {_f(g.gap_3_1)} |"
        )
    return L


def table3_section(rep: PackReport) -> list[str]:
    t = rep.table3
    L = [
        "",
        f"## Experts (Table 3): mean over the {t.n_experts} experts, mean ± std over {t.seeds} seeds",
        "",
        "| expert kind | target | overall |",
        "| --- | --- | --- |",
        f"| generalist {t.model} | {_f(t.generalist_target)} | {_f(t.generalist_overall)} |",
    ]
    L += [f"| {kind} | {_f(t.kind(kind).target)} | {_f(t.kind(kind).overall)} |" for kind in KINDS]
    if t.compact is not None:
        L.append(f"| compact | {_f(t.compact.target)} | {_f(t.compact.overall)} |")
    ms = t.multi_seed
    if ms.experts != list(rep.experts):
        L += ["", f"The experts trained with every seed ({', '.join(ms.experts)}), on their own target subsets:", ""]
        L += ["| expert kind | target | overall |", "| --- | --- | --- |", f"| generalist {t.model} | {_f(ms.generalist_target)} | - |"]
        L += [f"| {kind} | {_f(ms.kind(kind).target)} | {_f(ms.kind(kind).overall)} |" for kind in KINDS]
    return L


def experts_section(rep: PackReport) -> list[str]:
    L = [
        "",
        "## Per expert (target = test images of the expert's subsets)",
        "",
        "| expert | n target | gen. target | progr. target | static target | uniform target | compact target | M_I target | progr. overall | static overall | uniform overall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, e in rep.experts.items():
        compact = e.compact.target if e.compact else None
        teacher = e.teacher.target if e.teacher else None
        L.append(
            f"| {key} | {e.target_n} | {_f(e.generalist_target)} | {_f(e.progressive.target)} | "
            f"{_f(e.static.target)} | {_f(e.uniform.target)} | {_f(compact)} | "
            f"{_f(teacher)} | {_f(e.progressive.overall)} | {_f(e.static.overall)} | "
            f"{_f(e.uniform.overall)} |"
        )
    return L


def system_section(rep: PackReport) -> list[str]:
    dt = rep.default_tau
    L = [
        "",
        f"## Whole system (Algorithm 1 from logits); default tau {dt.tau} chosen on validation "
        f"(lowest tau within {dt.tolerance_pt} pt of the best validation accuracy)",
        "",
    ]
    first = rep.system_sweep[0]
    families = [k for k in (*KINDS, "compact") if getattr(first, k) is not None]
    cols = ["alpha_pct", "edge_only", *families, *(f"coinference_{s}" for s in first.coinference)]
    L += ["| tau | " + " | ".join(cols) + " | best fixed expert |", "| --- " * (len(cols) + 2) + "|"]
    for r in rep.system_sweep:
        fx = r.fixed_expert
        vals = [r.alpha_pct, r.edge_only, *(getattr(r, k) for k in families), *r.coinference.values()]
        L.append(f"| {r.tau} | " + " | ".join(_f(v) for v in vals) + f" | {fx.accuracy:.2f} ({fx.best_key}) |")
    gcols = [c for c in first.offloaded if c != "progressive"]
    L += [
        "",
        "Accuracy on the offloaded frames alone (Figure 4 on the same frames):",
        "",
        "| tau | n offloaded (%) | routed progressive experts | " + " | ".join(f"{c} generalist" for c in gcols) + " |",
        "| --- " * (len(gcols) + 3) + "|",
    ]
    for r in rep.system_sweep:
        o = r.offloaded
        L.append(f"| {r.tau} | {r.alpha_pct} | {_f(o['progressive'])} | " + " | ".join(_f(o[c]) for c in gcols) + " |")
    dom = rep.offload_domains
    L += ["", f"Offloads at tau {dom.tau} by whether the true class is in the routed expert's subsets:", ""]
    L += ["| offloads | n | routed expert | generalist | difference (pt) |", "| --- | --- | --- | --- | --- |"]
    for name in ("in_domain", "out_of_domain"):
        g = getattr(dom, name)
        L.append(f"| {name.replace('_', ' ')} | {g.n} | {_f(g.expert)} | {_f(g.generalist)} | {_f(g.diff_pt)} |")
    return L


def records_section(rep: PackReport) -> list[str]:
    """The subset teachers and the premise sweep, from their steps' records."""
    L = []
    if rep.subset_teachers:
        L += ["", "## Subset teachers M_I on validation (target = the expert's subsets)", ""]
        L += ["| M_I | val top-1 | target | generalist on target | margin (pt) |", "| --- | --- | --- | --- | --- |"]
        for key, m in rep.subset_teachers.items():
            L.append(
                f"| {key} | {_f(m['val_top1'])} | {_f(m['val_target_top1'])} | {_f(m.get('generalist_val_target_top1'))} | "
                f"{_f(m.get('margin_over_generalist_pt'))} |"
            )
    if rep.premise:
        pr = rep.premise
        where = f"; ran on {pr['ran_on']}" if pr.get("ran_on") else ""
        L += ["", f"## Premise sweep (validation, {pr['epochs']} epochs of cross-entropy from scratch; {pr['rule']}{where})", ""]
        L += ["| setting | " + " | ".join(pr["ladder"]) + " | steps (pt) | ladder holds | params | wall (s) |"]
        L += ["| --- " * (len(pr["ladder"]) + 5) + "|"]
        for name, r in pr["settings"].items():
            L.append(
                f"| {name}{' (chosen)' if name == pr['chosen'] else ''} | "
                + " | ".join(_f(r["val_top1"][sh]) for sh in pr["ladder"])
                + f" | {r['steps_pt']} | {'yes' if r['ladder_holds'] else 'no'} | {r['ladder_params']} | {r['wall_s']} |"
            )
    return L


def alpha_section(rep: PackReport) -> list[str]:
    return [
        "",
        "## Offload proportion alpha(tau) (Table 4) and 3H top-k recall (Table 5)",
        "",
        "| tau | " + " | ".join(str(a.tau) for a in rep.alpha) + " |",
        "| --- " * (len(rep.alpha) + 1) + "|",
        "| ours (%) | " + " | ".join(_f(a.ours_pct) for a in rep.alpha) + " |",
        "| paper, CIFAR-100 (%) | " + " | ".join(_f(a.paper_pct) for a in rep.alpha) + " |",
        "",
        f"3H top-1/2/3: {rep.recall['3H']}; paper (CIFAR-100): {rep.recall['paper_cifar100']}.",
        "",
        f"Partition: {rep.partition} ({rep.partition_how}); subsets: {rep.subset_names}.",
        f"Validation samples whose top-k stays in one subset: {_f(rep.val_topk_within_one_subset)}.",
        "",
    ]


SECTIONS = (claims_section, generalists_section, table3_section, experts_section, system_section, records_section, alpha_section)


def to_markdown(rep: PackReport) -> str:
    return "\n".join(line for section in SECTIONS for line in section(rep))
