"""The paper's tau sweep offline, from logits: Table 4 (alpha), Figure 4 (accuracy), Table 5 (recall
gaps) and the section 4.2 latency/energy estimate (Figure 5), for a model pack.

    python -m evaluation sweep [--pack packs/fashion-mnist] [--taus 0.99,0.9,0.8,0.7,0.6,0.5] [--out DIR]
                               [--compute] [--edge-profile jetson-orin-nano] [--near-profile jetson-agx-orin]

Algorithm 1 is `askexpert.routing` (the edge's own code); this module only counts. Scenarios
(paper, section 5.3): Edge-Only (each generalist alone), Near-Edge-Only (the near-edge generalist
alone: same accuracy as Edge-Only of that model, different device), Generalist Co-inference (3H,
offload to a near-edge generalist) and Specialist Co-inference (3H, offload to the routed expert).
Plus alpha(tau) (Table 4) and the edge model's top-k recall gaps (Table 5).

Logits come from the pack's stored test logits (eval/logits-test.npz, written by the trainer) when
present, else (or with --compute) they are computed here with the torch backend on the test split
(and saved beside the report). Writes sweep.json, sweep.md, sweep.png and costs.png to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from askexpert.paper import PAPER_ALPHA_PCT, PAPER_TAUS, PAPER_TOPK
from askexpert.routing import decide, routed_logits, topk
from evaluation import REFERENCE_PACK


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    top = topk(np.asarray(logits, dtype=np.float64), k)
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else float("nan")


def sweep(
    edge_logits: np.ndarray,
    y: np.ndarray,
    partition: Sequence[int],
    k: int,
    taus: Sequence[float] = PAPER_TAUS,
    *,
    edge_name: str = "3H",
    generalists: Mapping[str, np.ndarray] | None = None,
    specialists: Mapping[str, Mapping[str, np.ndarray] | np.ndarray] | None = None,
) -> dict:
    """The paper's four scenarios over `taus`. Accuracies and alpha are fractions in [0, 1].

    generalists: near-edge generalists by name ("4H", "6H"): Edge-Only, Near-Edge-Only and the
    targets of Generalist Co-inference. specialists: expert families by name ("4H experts"), each
    per-expert logits {key: (N, C)} or already routed logits (N, C).
    """
    y = np.asarray(y)
    generalists = dict(generalists or {})
    d = decide(edge_logits, partition, k)
    routed = {n: (v if isinstance(v, np.ndarray) else routed_logits(d, v)) for n, v in (specialists or {}).items()}
    taus = [float(t) for t in taus]
    edge_acc = _acc(d.edge_label, y)
    res: dict = {
        "n": int(len(y)),
        "k": int(k),
        "taus": taus,
        "edge": edge_name,
        "alpha": {},
        "edge_only": {edge_name: edge_acc, **{n: _acc(np.argmax(v, axis=1), y) for n, v in generalists.items()}},
        "near_edge_only": {n: _acc(np.argmax(v, axis=1), y) for n, v in generalists.items()},
        "generalist_coinference": {n: {} for n in generalists},
        "specialist_coinference": {n: {} for n in routed},
        "expert_load": {},
        "routing": {},
    }
    part = np.asarray(partition)
    true_subset = part[y]
    in_expert = np.array([str(ts) in key.split("-") for ts, key in zip(true_subset, d.expert)])
    for tau in taus:
        off = d.offloaded(tau)
        res["alpha"][tau] = float(off.mean())
        for n, v in generalists.items():
            res["generalist_coinference"][n][tau] = _acc(np.where(off, v.argmax(axis=1), d.edge_label), y)
        for n, r in routed.items():
            res["specialist_coinference"][n][tau] = _acc(np.where(off, r.argmax(axis=1), d.edge_label), y)
        keys, counts = np.unique(d.expert[off].astype(str), return_counts=True)
        res["expert_load"][tau] = {str(a): int(b) for a, b in zip(keys, counts)}
        res["routing"][tau] = {
            # offloaded frames whose true class lies in the routed expert's subsets (recoverable)
            "offloaded_in_expert_domain": float(in_expert[off].mean()) if off.any() else float("nan"),
            "edge_wrong_among_offloaded": float((d.edge_label[off] != y[off]).mean()) if off.any() else float("nan"),
            "edge_wrong_among_kept": float((d.edge_label[~off] != y[~off]).mean()) if (~off).any() else float("nan"),
        }
    tk = [topk_accuracy(edge_logits, y, i) for i in (1, 2, 3)]
    res["recall"] = {"top1": tk[0], "top2": tk[1], "top3": tk[2], "gap_2_1": tk[1] - tk[0], "gap_3_1": tk[2] - tk[0]}
    return res


# ---------------------------------------------------------------------------------------- output
def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def to_markdown(res: dict, title: str = "Offline tau sweep") -> str:
    taus = res["taus"]
    head = "| scenario | " + " | ".join(f"tau={t:g}" for t in taus) + " |"
    rule = "| --- " * (len(taus) + 1) + "|"
    L = [f"# {title}", "", f"{res['n']} frames, edge model {res['edge']}, k={res['k']}. Values in %.", ""]
    L += [
        "## Offload proportion alpha(tau) (paper Table 4)",
        "",
        head,
        rule,
        "| alpha (this pack) | " + " | ".join(_pct(res["alpha"][t]) for t in taus) + " |",
        "| alpha (paper, CIFAR-100) | " + " | ".join(f"{PAPER_ALPHA_PCT[t]:.1f}" if t in PAPER_ALPHA_PCT else "-" for t in taus) + " |",
        "",
    ]
    L += ["## Accuracy per tau (paper Figure 4)", "", head, rule]
    for n, a in res["edge_only"].items():
        L.append(f"| Edge-Only {n} | " + " | ".join(_pct(a) for _ in taus) + " |")
    for n, a in res["near_edge_only"].items():
        L.append(f"| Near-Edge-Only {n} | " + " | ".join(_pct(a) for _ in taus) + " |")
    for n, row in res["generalist_coinference"].items():
        L.append(f"| Generalist Co-inference {res['edge']}->{n} | " + " | ".join(_pct(row[t]) for t in taus) + " |")
    for n, row in res["specialist_coinference"].items():
        L.append(f"| Specialist Co-inference {res['edge']}->{n} | " + " | ".join(_pct(row[t]) for t in taus) + " |")
    r = res["recall"]
    L += [
        "",
        f"## Top-k accuracy and recall gaps of {res['edge']} (paper Table 5)",
        "",
        "| data set | top-1 | top-2 | top-3 | gap 2-1 | gap 3-1 |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| this pack | {_pct(r['top1'])} | {_pct(r['top2'])} | {_pct(r['top3'])} | {_pct(r['gap_2_1'])} | {_pct(r['gap_3_1'])} |",
    ]
    for name, (a1, a2, a3) in PAPER_TOPK.items():
        L.append(f"| {name} (paper) | {a1:.2f} | {a2:.2f} | {a3:.2f} | {a2 - a1:.2f} | {a3 - a1:.2f} |")
    L += ["", "## Routing quality and expert load", "", head, rule]
    for field in ("offloaded_in_expert_domain", "edge_wrong_among_offloaded", "edge_wrong_among_kept"):
        L.append(f"| {field.replace('_', ' ')} | " + " | ".join(_pct(res["routing"][t][field]) for t in taus) + " |")
    experts = sorted({e for t in taus for e in res["expert_load"][t]}, key=lambda s: (len(s), s))
    for e in experts:
        L.append(f"| frames to expert {e} | " + " | ".join(str(res["expert_load"][t].get(e, 0)) for t in taus) + " |")
    if res.get("cost_markdown"):
        L += ["", "## Latency and energy estimate (paper section 4.2 and Figure 5)", "", res["cost_markdown"]]
    return "\n".join(L) + "\n"


def to_json(res: dict) -> str:
    def conv(o):
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        return o

    return json.dumps(conv(res), indent=2)


@contextmanager
def figure(path: str | Path, panels: int, figsize: tuple[float, float], suptitle: str | None = None) -> Iterator:
    """A row of `panels` matplotlib axes (Agg: no screen needed), saved to `path` and closed on exit:
    every figure of the sweep and of `system-figures` is made so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=figsize, squeeze=False)
    try:
        yield axes[0]
        if suptitle:
            fig.suptitle(suptitle, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot(res: dict, path: str | Path) -> Path:
    """Figure 4 analogue: accuracy vs tau, one panel per near-edge generalist, plus alpha(tau)."""
    taus = res["taus"]
    panels = list(res["generalist_coinference"]) or [None]
    with figure(path, len(panels) + 1, (5.2 * (len(panels) + 1), 4.2)) as axes:
        for ax, g in zip(axes, panels):
            ax.axhline(100 * res["edge_only"][res["edge"]], color="grey", ls=":", label=f"Edge-Only {res['edge']}")
            if g is not None:
                ax.axhline(100 * res["near_edge_only"][g], color="k", ls="--", label=f"Edge/Near-Edge-Only {g}")
                ax.plot(
                    taus, [100 * res["generalist_coinference"][g][t] for t in taus], "o-", label=f"Generalist Co-inf. {res['edge']}->{g}"
                )
            for n, row in res["specialist_coinference"].items():
                ax.plot(taus, [100 * row[t] for t in taus], "s-", label=f"Specialist Co-inf. {res['edge']}->{n}")
            ax.set_xlabel("confidence threshold tau")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"near-edge {g}" if g else "accuracy")
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[-1]
        ax.plot(taus, [100 * res["alpha"][t] for t in taus], "o-", label="this pack")
        pt = [t for t in taus if t in PAPER_ALPHA_PCT]
        ax.plot(pt, [PAPER_ALPHA_PCT[t] for t in pt], "x--", label="paper (CIFAR-100)")
        ax.set_xlabel("confidence threshold tau")
        ax.set_ylabel("offload proportion alpha (%)")
        ax.set_title("alpha(tau), Table 4")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Path(path)


def plot_costs(costs: dict, taus: list[float], path: Path, suptitle: str | None = None) -> None:
    """Figure 5 analogue: latency and energy per tau, normalised to Edge-Only, one panel per near-edge model."""
    models = list(costs["models"])
    if not models:
        return
    with figure(path, len(models), (5.5 * len(models), 4.2), suptitle) as axes:
        for ax, nm in zip(axes, models):
            m = costs["models"][nm]
            ax.plot(taus, [m["co_inference"][t]["T_norm"] for t in taus], "o-", label=f"latency, {costs['edge_model']}->{nm}")
            if m["co_inference"][taus[0]]["E_norm"] is not None:
                ax.plot(taus, [m["co_inference"][t]["E_norm"] for t in taus], "s-", label=f"energy, {costs['edge_model']}->{nm}")
                ax.axhline(m["near_edge_only"]["E_norm"], color="tab:orange", ls=":", label=f"Near-Edge-Only {m['reference']} energy")
            ax.axhline(1.0, color="k", ls="--", label=f"Edge-Only {m['reference']}")
            ax.axhline(m["near_edge_only"]["T_norm"], color="tab:blue", ls=":", label=f"Near-Edge-Only {m['reference']} latency")
            ax.set_xlabel("confidence threshold tau")
            ax.set_ylabel("normalised to Edge-Only")
            ax.set_title(f"{nm}: {costs['edge_device']} + {costs['near_device']}", fontsize=8)
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------- command
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="the paper's tau sweep offline, from logits (Table 4, Figure 4, Table 5, costs)")
    p.add_argument("--pack", default=str(REFERENCE_PACK), help="model pack (default: the reference pack)")
    p.add_argument("--taus", default=",".join(f"{t:g}" for t in PAPER_TAUS), help="comma-separated thresholds")
    p.add_argument("--out", default=None, help="output folder (default runs/sweep-<time>)")
    add_logits_args(p)
    p.add_argument("--edge-profile", default="jetson-orin-nano", help="profile name in profiles/ or a JSON path")
    p.add_argument("--near-profile", default="jetson-agx-orin")
    p.add_argument("--batch", type=int, default=10, help="B in T = T_E(B) + T_N(B alpha) (Table 1 uses 10)")
    p.set_defaults(func=run)


def add_logits_args(p: argparse.ArgumentParser) -> None:
    """Where the scenarios' logits come from (read by `scenarios`)."""
    p.add_argument("--compute", action="store_true", help="compute logits with the backend even if the pack stores them")
    p.add_argument("--dataset", default=None, help="data set for --compute (default: the pack's)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--backend", default="torch")


def scenarios(pack, a: argparse.Namespace, out: Path) -> tuple[dict, str]:
    """The logits of every scenario and where they came from: the pack's stored test logits, or
    computed with a backend (--compute)."""
    from evaluation.logits import compute_scenarios, scenarios_from_stored, stored_logits

    z = None if a.compute else stored_logits(pack)
    if z is None:
        dataset = a.dataset or (pack.manifest.dataset if pack.manifest.dataset != "random" else "fashion-mnist")
        sc = compute_scenarios(pack, dataset, a.split, a.max_frames, a.backend, out)
        return sc, f"logits computed with the {a.backend} backend on {dataset}:{a.split}"
    sc = scenarios_from_stored(pack, z)
    if a.max_frames:
        n = a.max_frames
        sc = {
            **sc,
            "edge_logits": sc["edge_logits"][:n],
            "y": sc["y"][:n],
            "generalists": {k: v[:n] for k, v in sc["generalists"].items()},
            "specialists": {k: v[:n] for k, v in sc["specialists"].items()},
        }
    return sc, f"stored logits {pack.root / 'eval/logits-test.npz'} (fp16)"


def _add_costs(res: dict, sc: dict, a: argparse.Namespace, taus: list[float], out: Path) -> None:
    """Latency and energy per scenario from the device profiles (res["cost"]), and their plot."""
    from evaluation.costmodel import Profile, costs_markdown, scenario_costs

    try:
        edge_p, near_p = Profile.load(a.edge_profile), Profile.load(a.near_profile)
        near_models = sorted({n.split(" ")[0] for n in sc["generalists"]} | {n.split(" ")[0] for n in sc["specialists"]})
        costs = scenario_costs(edge_p, near_p, res["alpha"], batch=a.batch, edge_model=sc["edge_name"], near_models=near_models)
        res["cost"], res["cost_markdown"] = costs, costs_markdown(costs, taus)
        plot_costs(costs, taus, out / "costs.png")
    except (OSError, KeyError) as exc:
        print(f"no latency/energy estimate: {exc}", file=sys.stderr)


def run(a: argparse.Namespace) -> int:
    """Write the sweep's report, tables and plots for one pack."""
    from askexpert.pack import Pack, PackError  # torch: only for this command

    try:
        pack = Pack.load(a.pack)
    except PackError as exc:
        print(
            f"error: {exc}\nTrain the reference pack first: trainer pack --dataset fashion-mnist --out packs/fashion-mnist", file=sys.stderr
        )
        return 2
    taus = [float(t) for t in a.taus.split(",") if t.strip()]
    out = Path(a.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)
    sc, origin = scenarios(pack, a, out)
    m = pack.manifest
    res = sweep(
        sc["edge_logits"],
        sc["y"],
        m.partition,
        m.k,
        taus,
        edge_name=sc["edge_name"],
        generalists=sc["generalists"],
        specialists=sc["specialists"],
    )
    res["pack"], res["origin"] = str(a.pack), origin
    _add_costs(res, sc, a, taus, out)
    title = f"Offline tau sweep: {m.name} ({m.dataset}), {origin}"
    (out / "sweep.md").write_text(to_markdown(res, title))
    (out / "sweep.json").write_text(to_json(res) + "\n")
    plot(res, out / "sweep.png")
    written = ["sweep.md", "sweep.json", "sweep.png", "costs.png"]
    rep = pack.manifest.reports.get("markdown")
    if rep and (pack.root / rep).is_file():  # the trainer's claims, Table 3 with seeds and controls
        (out / "pack-report.md").write_text((pack.root / rep).read_text())
        written.append("pack-report.md")
    print(to_markdown(res, title))
    print(f"written: {out}/" + ", ".join(written))
    return 0
