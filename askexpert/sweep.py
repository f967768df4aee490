"""Algorithm 1 offline, from logits: the labels the live system gives, and the paper's tau sweep.

Everything here is pure numpy on logits (N, C). Semantics are the paper's Algorithm 1 exactly, as
the edge node runs it: P = softmax(edge logits), conf = max P; conf >= tau -> argmax P at the edge;
else the top-k classes (ties: lower index first) map through the partition to the expert key I,
and the label is argmax of that expert's logits. Routing does not depend on tau, so one expert
evaluation per frame (the routed one) serves every tau.

Scenarios (paper, section 5.3): Edge-Only (each generalist alone), Near-Edge-Only (the near-edge
generalist alone: same accuracy as Edge-Only of that model, different device), Generalist
Co-inference (3H, offload to a near-edge generalist) and Specialist Co-inference (3H, offload to
the routed expert). Plus alpha(tau) (Table 4) and the edge model's top-k recall gaps (Table 5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from askexpert.routing import Decision, decide, topk

PAPER_TAUS = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5)
# Table 4 of the paper (CIFAR-100, DeiT-3H edge): offload proportion alpha(tau) in percent.
PAPER_ALPHA_PCT = {0.99: 74.7, 0.9: 46.2, 0.8: 35.8, 0.7: 27.8, 0.6: 20.8, 0.5: 13.3}
# Table 5 of the paper: DeiT-3H top-k accuracy (%) on CIFAR-100 and ImageNet.
PAPER_TOPK = {"CIFAR-100": (80.16, 89.73, 93.40), "ImageNet": (74.52, 84.62, 88.50)}


def routed_logits(decision: Decision, expert_logits: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per frame, the logits of the expert it routes to, from per-expert logits over all frames."""
    missing = sorted(set(decision.expert) - set(expert_logits))
    if missing:
        raise KeyError(f"no logits for experts {missing}")
    first = next(iter(expert_logits.values()))
    out = np.empty((len(decision.expert), first.shape[1]), dtype=np.float32)
    for key in set(decision.expert):
        rows = decision.expert == key
        out[rows] = np.asarray(expert_logits[key])[rows]
    return out


def offline_labels(decision: Decision, routed: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1's final labels at `tau` and the offload mask; `routed` = routed_logits(...)."""
    off = decision.offloaded(tau)
    return np.where(off, np.asarray(routed).argmax(axis=-1), decision.edge_label), off


def algorithm1(edge_logits: np.ndarray, partition: Sequence[int], k: int, tau: float,
               expert_logits: Mapping[str, np.ndarray] | np.ndarray) -> dict:  # fmt: skip
    """Final labels, source, expert and offload mask per frame; expert logits per key or already routed."""
    d = decide(edge_logits, partition, k)
    routed = expert_logits if isinstance(expert_logits, np.ndarray) else routed_logits(d, expert_logits)
    labels, off = offline_labels(d, routed, tau)
    return {"labels": labels, "offloaded": off, "expert": np.where(off, d.expert, None), "decision": d}


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
    L += ["## Offload proportion alpha(tau) (paper Table 4)", "", head, rule,
          "| alpha (this pack) | " + " | ".join(_pct(res["alpha"][t]) for t in taus) + " |",
          "| alpha (paper, CIFAR-100) | " + " | ".join(f"{PAPER_ALPHA_PCT[t]:.1f}" if t in PAPER_ALPHA_PCT else "-" for t in taus) + " |",
          ""]  # fmt: skip
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
    L += ["", f"## Top-k accuracy and recall gaps of {res['edge']} (paper Table 5)", "",
          "| data set | top-1 | top-2 | top-3 | gap 2-1 | gap 3-1 |", "| --- | --- | --- | --- | --- | --- |",
          f"| this pack | {_pct(r['top1'])} | {_pct(r['top2'])} | {_pct(r['top3'])} | {_pct(r['gap_2_1'])} | {_pct(r['gap_3_1'])} |"]  # fmt: skip
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


def plot(res: dict, path: str | Path) -> Path:
    """Figure 4 analogue: accuracy vs tau, one panel per near-edge generalist, plus alpha(tau)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = res["taus"]
    panels = list(res["generalist_coinference"]) or [None]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.2))
    for ax, g in zip(axes, panels):
        ax.axhline(100 * res["edge_only"][res["edge"]], color="grey", ls=":", label=f"Edge-Only {res['edge']}")
        if g is not None:
            ax.axhline(100 * res["near_edge_only"][g], color="k", ls="--", label=f"Edge/Near-Edge-Only {g}")
            ax.plot(taus, [100 * res["generalist_coinference"][g][t] for t in taus], "o-", label=f"Generalist Co-inf. {res['edge']}->{g}")
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------- logits
def pack_logits(pack, images: np.ndarray, *, backend: str = "torch", device: str = "cpu", batch: int = 256,
                baselines: bool = True, edge_logits: np.ndarray | None = None, tau: float | None = None) -> dict:  # fmt: skip
    """Logits of a pack's models on uint8 images (N, H, W, C) at the pack's input size.

    Returns {"edge": generalist logits, "routed": each image's routed expert's logits,
    "experts": routed keys, "baselines": {name: logits}}: exactly what Algorithm 1 needs for
    every tau (routing does not depend on tau), computed with the same backend as the live system.
    With `tau`, experts run only on the frames offloaded at that tau (the other rows are NaN).
    """
    from askexpert.backends import open_backend

    be = open_backend(backend, device)
    m = pack.manifest

    def run(fn) -> np.ndarray:
        return np.concatenate([fn(images[i : i + batch]) for i in range(0, len(images), batch)])

    edge = run(be.classifier(pack, m.generalist)) if edge_logits is None else edge_logits
    d = decide(edge, m.partition, m.k)
    lib = be.experts(pack, m.experts)
    keys = np.asarray(d.expert)
    rows = np.flatnonzero(d.offloaded(tau)) if tau is not None else np.arange(len(images))
    routed = np.full(edge.shape, np.nan, dtype=np.float32)
    for i in range(0, len(rows), batch):
        r = rows[i : i + batch]
        routed[r] = lib(images[r], list(keys[r]))
    out = {"edge": edge, "routed": routed, "experts": np.asarray(keys)}
    if baselines:
        out["baselines"] = {name: run(be.classifier(pack, entry)) for name, entry in m.baselines.items()}
    return out


def shape_name(arch: dict) -> str:
    """'3H', '4H', ... from a manifest arch (by width), else 'd<width>'."""
    from askexpert.models import SHAPES

    names = {dim: name for name, (dim, _) in SHAPES.items()}
    return names.get(int(arch.get("embed_dim", 0)), f"d{arch.get('embed_dim')}")


def stored_logits(pack) -> dict | None:
    """The pack's stored test logits (eval/logits-test.npz, written by the trainer), or None."""
    rel = (pack.manifest.reports.get("logits") or {}).get("file", "eval/logits-test.npz")
    path = pack.root / rel
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {n: z[n] for n in z.files}


def scenarios_from_stored(pack, z: dict) -> dict:
    """Map the trainer's logits keys onto sweep() arguments.

    Keys: generalist-<shape> (the edge), baseline-<shape> / teacher-<shape> (near-edge
    generalists), <kind>-<expert key> with kind progressive (the pack's experts), static, uniform,
    compact or full (older packs), or <kind>-routed (NaN rows where that kind has no expert) with
    routed-key; labels."""
    m = pack.manifest
    edge_name = shape_name(m.generalist.arch)
    edge = z[f"generalist-{edge_name}"].astype(np.float32)
    gens = {n.split("-", 1)[1]: z[n].astype(np.float32) for n in z if n.startswith("baseline-")}
    for n in z:
        if n.startswith("teacher-") and n.split("-", 1)[1] not in gens:
            gens[n.split("-", 1)[1] + " (teacher)"] = z[n].astype(np.float32)
    exp_shape = shape_name(m.experts[0].arch) if m.experts else "?"
    d = decide(edge, m.partition, m.k)
    specs: dict = {}
    for kind, label in (("progressive", f"{exp_shape} experts"), ("static", f"{exp_shape} static experts"),
                        ("uniform", f"{exp_shape} uniform experts"), ("compact", f"{exp_shape} compact experts"),
                        ("full", f"{exp_shape} full experts")):  # fmt: skip
        per_key = {n.split("-", 1)[1]: z[n].astype(np.float32) for n in z if n.startswith(kind + "-") and n != f"{kind}-routed"}
        if per_key and set(d.expert) <= set(per_key):
            specs[label] = routed_logits(d, per_key)
        elif f"{kind}-routed" in z:
            r = z[f"{kind}-routed"].astype(np.float32)
            if not np.isnan(r).any():
                specs[label] = r
    return {"edge_logits": edge, "y": z["labels"].astype(np.int64), "edge_name": edge_name, "generalists": gens, "specialists": specs}
