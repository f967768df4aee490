"""The paper's tau sweep offline, from logits: Table 4 (alpha), Figure 4 (accuracy), Table 5 (recall
gaps) and the section 4.2 latency/energy estimate (Figure 5), for a model pack.

    python -m tools.sweep --pack packs/fashion-mnist [--taus 0.99,0.9,0.8,0.7,0.6,0.5] [--out DIR]
                          [--compute] [--edge-profile jetson-orin-nano] [--near-profile jetson-agx-orin]

Logits come from the pack's stored test logits (eval/logits-test.npz, written by the trainer) when
present, else (or with --compute) they are computed here with the torch backend on the test split
(and saved beside the report). Writes sweep.json, sweep.md, sweep.png and costs.png to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from askexpert.costmodel import Profile, costs_markdown, scenario_costs
from askexpert.pack import Pack, PackError
from askexpert.sweep import PAPER_TAUS, pack_logits, plot, scenarios_from_stored, shape_name, stored_logits, sweep, to_json, to_markdown


def compute_scenarios(pack: Pack, dataset: str, split: str, max_frames: int | None, backend: str, out: Path) -> dict:
    from askexpert.datasets import load_dataset
    from edge_node.node import fit_frame

    data = load_dataset(dataset, split)
    n = len(data) if max_frames is None else min(max_frames, len(data))
    spec = pack.manifest.input
    images = np.stack([fit_frame(data.images[i], spec) for i in range(n)]) if data.images.shape[1:] != (spec.size, spec.size, spec.channels) else data.images[:n]
    t = time.monotonic()
    lg = pack_logits(pack, images, backend=backend)
    print(f"computed logits of {n} {dataset}:{split} images in {time.monotonic() - t:.1f} s", file=sys.stderr)
    exp_shape = shape_name(pack.manifest.experts[0].arch) if pack.manifest.experts else "?"
    np.savez_compressed(out / "logits-computed.npz", labels=data.labels[:n], edge=lg["edge"], routed=lg["routed"],
                        **{f"baseline-{k}": v for k, v in lg["baselines"].items()})  # fmt: skip
    return {"edge_logits": lg["edge"], "y": np.asarray(data.labels[:n]), "edge_name": shape_name(pack.manifest.generalist.arch),
            "generalists": lg["baselines"], "specialists": {f"{exp_shape} experts": lg["routed"]}}  # fmt: skip


def plot_costs(costs: dict, taus: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(costs["models"])
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, nm in zip(axes[0], models):
        m = costs["models"][nm]
        ax.plot(taus, [m["co_inference"][t]["T_norm"] for t in taus], "o-", label=f"latency, {costs['edge_model']}->{nm}")
        if m["co_inference"][taus[0]]["E_norm"] is not None:
            ax.plot(taus, [m["co_inference"][t]["E_norm"] for t in taus], "s-", label=f"energy, {costs['edge_model']}->{nm}")
            ax.axhline(m["near_edge_only"]["E_norm"], color="tab:orange", ls=":", label="Near-Edge-Only energy")
        ax.axhline(1.0, color="k", ls="--", label=f"Edge-Only {nm}")
        ax.axhline(m["near_edge_only"]["T_norm"], color="tab:blue", ls=":", label="Near-Edge-Only latency")
        ax.set_xlabel("confidence threshold tau")
        ax.set_ylabel("normalised to Edge-Only")
        ax.set_title(f"{nm}: {costs['edge_device']} + {costs['near_device']}", fontsize=8)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default="packs/fashion-mnist")
    p.add_argument("--taus", default=",".join(f"{t:g}" for t in PAPER_TAUS), help="comma-separated thresholds")
    p.add_argument("--out", default=None, help="output folder (default runs/sweep-<time>)")
    p.add_argument("--compute", action="store_true", help="compute logits with the backend even if the pack stores them")
    p.add_argument("--dataset", default=None, help="data set for --compute (default: the pack's)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--backend", default="torch")
    p.add_argument("--edge-profile", default="jetson-orin-nano", help="profile name in profiles/ or a JSON path")
    p.add_argument("--near-profile", default="jetson-agx-orin")
    p.add_argument("--batch", type=int, default=10, help="B in T = T_E(B) + T_N(B alpha) (Table 1 uses 10)")
    a = p.parse_args(argv)

    try:
        pack = Pack.load(a.pack)
    except PackError as exc:
        print(f"error: {exc}\nTrain the reference pack first: trainer pack --dataset fashion-mnist --out packs/fashion-mnist", file=sys.stderr)
        return 2
    taus = [float(t) for t in a.taus.split(",") if t.strip()]
    out = Path(a.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)

    z = None if a.compute else stored_logits(pack)
    if z is not None:
        sc = scenarios_from_stored(pack, z)
        origin = f"stored logits {pack.root / 'eval/logits-test.npz'} (fp16)"
        if a.max_frames:
            n = a.max_frames
            sc = {**sc, "edge_logits": sc["edge_logits"][:n], "y": sc["y"][:n],
                  "generalists": {k: v[:n] for k, v in sc["generalists"].items()},
                  "specialists": {k: v[:n] for k, v in sc["specialists"].items()}}  # fmt: skip
    else:
        dataset = a.dataset or (pack.manifest.dataset if pack.manifest.dataset != "random" else "fashion-mnist")
        sc = compute_scenarios(pack, dataset, a.split, a.max_frames, a.backend, out)
        origin = f"logits computed with the {a.backend} backend on {dataset}:{a.split}"
    m = pack.manifest
    res = sweep(sc["edge_logits"], sc["y"], m.partition, m.k, taus, edge_name=sc["edge_name"],
                generalists=sc["generalists"], specialists=sc["specialists"])  # fmt: skip
    res["pack"], res["origin"] = str(a.pack), origin
    try:
        edge_p, near_p = Profile.load(a.edge_profile), Profile.load(a.near_profile)
        near_models = sorted({n.split(" ")[0] for n in sc["generalists"]} | {n.split(" ")[0] for n in sc["specialists"]})
        costs = scenario_costs(edge_p, near_p, res["alpha"], batch=a.batch, edge_model=sc["edge_name"], near_models=near_models)
        res["cost"], res["cost_markdown"] = costs, costs_markdown(costs, taus)
        plot_costs(costs, taus, out / "costs.png")
    except (OSError, KeyError) as exc:
        print(f"no latency/energy estimate: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
