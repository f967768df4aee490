"""The paper's system-level results for a pack: Figure 5 (latency and energy against Edge-Only and
Near-Edge-Only per tau), Figure 6 (accuracy against latency and energy, normalised to Edge-Only
3H) and Figure 7 (return on offload: accuracy gained over Edge-Only 3H per added ms and per
added mJ, experts against generalist co-inference), from the pack's test logits and two device
profiles.

    python -m evaluation system-figures [--pack packs/fashion-mnist] --profile-edge jetson-orin-nano
        --profile-near jetson-agx-orin [--batch 10] [--taus 0.99,...] [--label TEXT] --out DIR

Accuracy and alpha(tau) are the sweep's (evaluation/sweep.py, Algorithm 1 on the logits); costs
are the cost model's (evaluation/costmodel.py: T = T_E(B) + T_N(B alpha), the same for energy),
per frame (per batch / B). Every output names the profiles it rests on and where their energy
comes from. Writes fig5.png, fig6.png, fig7.png, system.md and system.json to --out.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import Mapping

from evaluation import REFERENCE_PACK
from evaluation.costmodel import Profile, costs_markdown, scenario_costs
from evaluation.sweep import add_logits_args, figure, plot_costs, scenarios, sweep, to_json


def cost_models(pack, sc: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Profile model names of the scenarios' near-edge generalists and served expert families:
    "12H (teacher)" -> "12H/16"; "4H/16 experts" -> "4H/16 expert" (whole) or "4H/16 compact
    expert" (tails on the trunk), as bench/profile_device.py names them. The static and uniform
    controls are not served and are left out."""
    from askexpert.models import shape_label, shape_name

    m = pack.manifest
    head_dim = m.generalist.arch["embed_dim"] // m.generalist.arch["num_heads"]
    gens = {}
    for name in sc["generalists"]:
        base = name.split(" ")[0]
        gens[name] = base if "/" in base else shape_label(base, head_dim)
    experts = {}
    if m.experts:
        shape = shape_name(m.experts[0].arch)
        served = "expert" if m.experts[0].kind == "vit" else "compact expert"
        for name in sc["specialists"]:
            if name == f"{shape} experts":
                experts[name] = f"{shape} {served}"
            elif name == f"{shape} compact experts":
                experts[name] = f"{shape} compact expert"
    return gens, experts


def _per_frame(p: Profile, model: str, frames: float, batch: int) -> tuple[float, float | None]:
    """(ms, mJ) per frame of a batch of `batch` frames of which `frames` run `model` on `p`."""
    e = p.energy_mj(model, frames)
    return p.latency_ms(model, frames) / batch, None if e is None else e / batch


def _point(
    kind: str, label: str, acc: float, cost: tuple[float, float | None], base: tuple[float, float | None], tau: float | None = None
) -> dict:
    """One point of Figure 6: accuracy and per-frame costs, also normalised to Edge-Only 3H (`base`)."""
    (t, e), (bt, be) = cost, base
    return {
        "kind": kind,
        "label": label,
        "tau": tau,
        "accuracy": acc,
        "T_ms_frame": t,
        "E_mJ_frame": e,
        "T_norm_3H": t / bt,
        "E_norm_3H": None if e is None or not be else e / be,
    }


def system_results(
    res: dict, edge: Profile, near: Profile, gens: Mapping[str, str], experts: Mapping[str, str], *, batch: int, expert_shape: str
) -> dict:
    """Figures 5-7 in numbers from a sweep() result and two profiles. Costs per frame."""
    edge_model, taus, alpha = res["edge"], res["taus"], res["alpha"]
    fig5_models = [gens[g] for g in gens if "teacher" not in g] + list(experts.values())
    references = {e: expert_shape for e in experts.values()}
    fig5 = scenario_costs(edge, near, alpha, batch=batch, edge_model=edge_model, near_models=fig5_models, references=references)
    base = _per_frame(edge, edge_model, batch, batch)
    pareto = [_point("edge-only", edge_model, res["edge_only"][edge_model], base, base)]
    co: dict[str, tuple[str, dict]] = {}  # scenario label -> (profile model, accuracy per tau)
    for g, model in gens.items():
        if edge.has(model):
            pareto.append(_point("edge-only", g, res["edge_only"][g], _per_frame(edge, model, batch, batch), base))
        if near.has(model):
            pareto.append(_point("near-edge-only", g, res["near_edge_only"][g], _per_frame(near, model, batch, batch), base))
            co[f"generalist co-inference {edge_model}->{g}"] = (model, res["generalist_coinference"][g])
    for name, model in experts.items():
        if near.has(model):
            co[f"specialist co-inference {edge_model}->{name}"] = (model, res["specialist_coinference"][name])
    roi: dict = {}
    for label, (model, accs) in co.items():
        roi[label] = {}
        for tau in taus:
            t_n, e_n = _per_frame(near, model, batch * alpha[tau], batch)
            total = (base[0] + t_n, None if e_n is None or base[1] is None else base[1] + e_n)
            pareto.append(_point("co-inference", label, accs[tau], total, base, tau))
            gain = 100 * (accs[tau] - res["edge_only"][edge_model])
            roi[label][tau] = {
                "gain_pt": gain,
                "added_ms_frame": t_n,
                "added_mJ_frame": e_n,
                "pt_per_ms": gain / t_n if t_n else None,
                "pt_per_mJ": gain / e_n if e_n else None,
            }
    return {"batch": batch, "edge_model": edge_model, "taus": taus, "alpha": alpha, "fig5": fig5, "fig6": pareto, "fig7": roi}


# ---------------------------------------------------------------------------------------- output
def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _name(p: dict) -> str:
    return p["label"] if p["kind"] == "co-inference" else f"{p['kind']} {p['label']}"


def to_markdown(sysres: dict, rests_on: str, title: str) -> str:
    taus = sysres["taus"]
    head = "| | " + " | ".join(f"tau={t:g}" for t in taus) + " |"
    rule = "| --- " * (len(taus) + 1) + "|"
    L = [f"# {title}", "", f"**Rests on:** {rests_on}", ""]
    L += [head, rule, "| alpha (%) | " + " | ".join(f"{100 * sysres['alpha'][t]:.2f}" for t in taus) + " |", ""]
    L += [
        "## Figure 5: latency and energy per frame against Edge-Only and Near-Edge-Only",
        "",
        costs_markdown(sysres["fig5"], taus, per_frame=True),
    ]
    L += [
        f"## Figure 6: accuracy against latency and energy per frame, normalised to Edge-Only {sysres['edge_model']}",
        "",
        "| scenario | tau | accuracy (%) | latency (ms/frame) | latency / 3H | energy (mJ/frame) | energy / 3H |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in sysres["fig6"]:
        tau = "-" if p["tau"] is None else f"{p['tau']:g}"
        L.append(
            f"| {_name(p)} | {tau} | {100 * p['accuracy']:.2f} | {_f(p['T_ms_frame'], 3)} | {_f(p['T_norm_3H'])} | "
            f"{_f(p['E_mJ_frame'], 3)} | {_f(p['E_norm_3H'])} |"
        )
    L += [
        "",
        f"## Figure 7: return on offload (accuracy gained over Edge-Only {sysres['edge_model']} per added ms and per added mJ, per frame)",
        "",
        head,
        rule,
    ]
    roi = sysres["fig7"]
    for label, rows in roi.items():
        L.append(f"| {label}: gain (pt) | " + " | ".join(_f(rows[t]["gain_pt"]) for t in taus) + " |")
        L.append(f"| {label}: pt per ms | " + " | ".join(_f(rows[t]["pt_per_ms"], 3) for t in taus) + " |")
        L.append(f"| {label}: pt per mJ | " + " | ".join(_f(rows[t]["pt_per_mJ"], 3) for t in taus) + " |")
    L += [
        "",
        "Return on offload of each expert family divided by that of a generalist's co-inference (above 1: the experts return more):",
        "",
        head,
        rule,
    ]
    for e in (k for k in roi if k.startswith("specialist")):
        for g in (k for k in roi if k.startswith("generalist")):
            for unit in ("ms", "mJ"):
                cells = []
                for t in taus:
                    a, b = roi[e][t][f"pt_per_{unit}"], roi[g][t][f"pt_per_{unit}"]
                    cells.append("-" if a is None or not b else f"{a / b:.2f}")
                L.append(f"| {e.split('->')[1]} / {g.split('->')[1]}, per {unit} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def plot_pareto(sysres: dict, path: Path, suptitle: str) -> None:
    """Figure 6 analogue: accuracy against normalised latency (left) and energy (right)."""
    with figure(path, 2, (12, 5), suptitle) as axes:
        for ax, key, what in ((axes[0], "T_norm_3H", "latency"), (axes[1], "E_norm_3H", "energy")):
            pts = [p for p in sysres["fig6"] if p[key] is not None]
            for kind, marker in (("edge-only", "o"), ("near-edge-only", "^")):
                for p in (p for p in pts if p["kind"] == kind):
                    ax.plot(p[key], 100 * p["accuracy"], marker, ms=8, label=_name(p))
            for label in dict.fromkeys(p["label"] for p in pts if p["kind"] == "co-inference"):
                line = [p for p in pts if p["label"] == label]
                ax.plot([p[key] for p in line], [100 * p["accuracy"] for p in line], "s-" if "specialist" in label else ".--", label=label)
            ax.set_xlabel(f"{what} per frame / Edge-Only {sysres['edge_model']}")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)


def plot_roi(sysres: dict, path: Path, suptitle: str) -> None:
    """Figure 7 analogue: accuracy gained per added ms (left) and per added mJ (right), per tau."""
    taus = sysres["taus"]
    with figure(path, 2, (12, 4.5), suptitle) as axes:
        for ax, unit in ((axes[0], "ms"), (axes[1], "mJ")):
            for label, rows in sysres["fig7"].items():
                ys = [rows[t][f"pt_per_{unit}"] for t in taus]
                if any(y is not None for y in ys):
                    ax.plot(taus, [float("nan") if y is None else y for y in ys], "s-" if "specialist" in label else "o--", label=label)
            ax.set_xlabel("confidence threshold tau")
            ax.set_ylabel(f"accuracy gain (pt) per added {unit} per frame")
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)


# ---------------------------------------------------------------------------------------- command
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("system-figures", help="the paper's Figures 5, 6 and 7 for a pack from two device profiles")
    p.add_argument("--pack", default=str(REFERENCE_PACK))
    p.add_argument("--profile-edge", required=True, help="edge device profile: a name in profiles/ or a JSON path")
    p.add_argument("--profile-near", required=True, help="near-edge device profile")
    p.add_argument("--taus", default="0.99,0.9,0.8,0.7,0.6,0.5")
    p.add_argument("--batch", type=int, default=10, help="B in T = T_E(B) + T_N(B alpha) (Table 1 uses 10)")
    p.add_argument("--label", default=None, help="what the figures rest on (default: the two profiles' devices and sources)")
    p.add_argument("--out", default=None, help="output folder (default runs/system-<time>)")
    add_logits_args(p)
    p.set_defaults(func=run)


def rests_on(edge: Profile, near: Profile) -> str:
    def one(p: Profile) -> str:
        how = "the paper's Table 1, mapped by head count" if p.meta.get("by_shape") else "measured"
        run = ", ".join(f"{k} {p.meta[k]}" for k in ("backend", "precision", "threads") if p.meta.get(k))
        return f"{p.device} ({how}{': ' + run if run else ''}; {p.meta.get('source', '')}; energy: {p.energy_source or 'none'})"

    return f"edge {one(edge)}; near-edge {one(near)}"


def run(a: argparse.Namespace) -> int:
    from askexpert.models import shape_name
    from askexpert.pack import Pack, PackError

    try:
        pack = Pack.load(a.pack)
        edge, near = Profile.load(a.profile_edge), Profile.load(a.profile_near)
    except (PackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out or f"runs/system-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)
    taus = [float(t) for t in a.taus.split(",") if t.strip()]
    sc, origin = scenarios(pack, a, out)
    m = pack.manifest
    res = sweep(sc["edge_logits"], sc["y"], m.partition, m.k, taus, **{k: sc[k] for k in ("edge_name", "generalists", "specialists")})
    gens, experts = cost_models(pack, sc)
    missing = [x for x in [res["edge"], *gens.values()] if not edge.has(x)] + [
        x for x in [*gens.values(), *experts.values()] if not near.has(x)
    ]
    if missing:
        print(f"note: left out, not in the profiles: {', '.join(sorted(set(missing)))}", file=sys.stderr)
    sysres = system_results(res, edge, near, gens, experts, batch=a.batch, expert_shape=shape_name(m.experts[0].arch))
    label = a.label or rests_on(edge, near)
    sysres |= {"pack": m.name, "logits": origin, "rests_on": label, "n": res["n"]}
    title = f"System results: {m.name}, {res['n']} test frames ({origin}), B={a.batch}"
    (out / "system.md").write_text(to_markdown(sysres, label, title))
    (out / "system.json").write_text(to_json(sysres) + "\n")
    wrapped = textwrap.fill(label, 200)
    plot_costs(sysres["fig5"], taus, out / "fig5.png", suptitle=wrapped)
    plot_pareto(sysres, out / "fig6.png", wrapped)
    plot_roi(sysres, out / "fig7.png", wrapped)
    print(to_markdown(sysres, label, title))
    print(f"written: {out}/fig5.png, fig6.png, fig7.png, system.md, system.json")
    return 0
