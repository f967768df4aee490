"""Latency and energy in the paper's form (section 4.2), from per-device profiles.

For a batch of B frames and offload proportion alpha(tau):
    T_exec = T_E(B) + T_N(B * alpha)        E_exec = E_E(B) + E_N(B * alpha)
with T_E, T_N the edge's and the near-edge's profiled latency as a function of batch size.
Communication is not modelled as bandwidth: alpha itself measures the data sent (as the paper does).

A profile is a JSON file (see profiles/): {"device", "role", "models": {"3H": {"latency_ms":
{"10": 45.5, ...}, "energy_mj": {...}?}}, "power_w": W or null}, measured ones (written by
bench/profile_device.py) also "backend", "precision", "threads", "energy_source" (the reader that
measured energy_mj) and "power_source" (where power_w comes from). T(b) is piecewise linear in b
through (0, 0) over the measured batch sizes, extended linearly past the largest. E(b) comes from
energy_mj where measured, else power_w * T(b), else None; `energy_source` says which.

A profile with "by_shape": true (the paper's Table 1, DeiT shapes) answers for any model of the
same head count: "4H/16 expert" is costed as its "4H" row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def _curve(points: Mapping[str | int, float], b: float) -> float:
    xs = np.array([0.0] + sorted(float(k) for k in points))
    ys = np.array([0.0] + [float(points[k]) for k in sorted(points, key=float)])
    if b <= xs[-1]:
        return float(np.interp(b, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (b - xs[-1]))


@dataclass
class Profile:
    device: str
    models: dict
    power_w: float | None = None
    role: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path_or_name: str | Path) -> "Profile":
        p = Path(path_or_name)
        if not p.is_file():
            p = PROFILES_DIR / f"{path_or_name}.json"
        d = json.loads(p.read_text())
        return cls(d["device"], d["models"], d.get("power_w"), d.get("role", ""), d)

    def key(self, model: str) -> str:
        """The profile's row for `model`: its own, or (by_shape profiles) its head count's."""
        if model in self.models:
            return model
        shape = model.split(" ")[0].split("/")[0]
        if self.meta.get("by_shape") and shape in self.models:
            return shape
        raise KeyError(f"profile {self.device!r} has no model {model!r}; it has {sorted(self.models)}")

    def has(self, model: str) -> bool:
        try:
            return bool(self.key(model))
        except KeyError:
            return False

    def latency_ms(self, model: str, batch: float) -> float:
        return _curve(self.models[self.key(model)]["latency_ms"], batch) if batch > 0 else 0.0

    def energy_mj(self, model: str, batch: float) -> float | None:
        if batch <= 0:
            return 0.0
        e = self.models[self.key(model)].get("energy_mj")
        if e:
            return _curve(e, batch)
        return None if self.power_w is None else self.power_w * self.latency_ms(model, batch)

    @property
    def energy_source(self) -> str | None:
        """Where this profile's energies come from, or None where it has none."""
        if any(m.get("energy_mj") for m in self.models.values()):
            return f"measured: {self.meta.get('energy_source') or 'energy_mj in the profile'}"
        if self.power_w is not None:
            return f"{self.power_w:g} W x latency ({self.meta.get('power_source') or 'power_w in the profile'})"
        return None


def estimate(edge: Profile, near: Profile, alpha: float, *, batch: int = 10, edge_model: str = "3H", near_model: str = "4H") -> dict:
    """Section 4.2: T = T_E(B) + T_N(B alpha), E = E_E(B) + E_N(B alpha); ms and mJ per batch."""
    t_e, t_n = edge.latency_ms(edge_model, batch), near.latency_ms(near_model, batch * alpha)
    e_e, e_n = edge.energy_mj(edge_model, batch), near.energy_mj(near_model, batch * alpha)
    energy = None if e_e is None or e_n is None else e_e + e_n
    return {
        "T_ms": t_e + t_n,
        "T_E_ms": t_e,
        "T_N_ms": t_n,
        "E_mJ": energy,
        "E_E_mJ": e_e,
        "E_N_mJ": e_n,
        "offloaded_per_batch": batch * alpha,
    }


def scenario_costs(
    edge: Profile,
    near: Profile,
    alpha: Mapping[float, float],
    *,
    batch: int = 10,
    edge_model: str = "3H",
    near_models: Sequence[str] = ("4H", "6H"),
    references: Mapping[str, str] | None = None,
) -> dict:
    """The paper's Figure 5 in numbers: Edge-Only, Near-Edge-Only and co-inference per tau,
    absolute (ms, mJ per batch) and normalised to Edge-Only of the same near-edge model, or of the
    generalist `references` names for it (experts are held against their shape's generalist)."""
    out: dict = {
        "batch": batch,
        "edge_device": edge.device,
        "near_device": near.device,
        "edge_model": edge_model,
        "energy_source": {"edge": edge.energy_source, "near_edge": near.energy_source},
        "models": {},
    }
    for nm in near_models:
        ref = (references or {}).get(nm, nm)
        if not (edge.has(ref) and near.has(ref) and near.has(nm)):
            continue
        eo_t, eo_e = edge.latency_ms(ref, batch), edge.energy_mj(ref, batch)
        ne_t, ne_e = near.latency_ms(ref, batch), near.energy_mj(ref, batch)
        rows = {}
        for tau, a in alpha.items():
            est = estimate(edge, near, a, batch=batch, edge_model=edge_model, near_model=nm)
            rows[tau] = {**est, "T_norm": est["T_ms"] / eo_t, "E_norm": None if est["E_mJ"] is None or not eo_e else est["E_mJ"] / eo_e}
        out["models"][nm] = {
            "reference": ref,
            "edge_only": {"T_ms": eo_t, "E_mJ": eo_e, "T_norm": 1.0, "E_norm": 1.0 if eo_e else None},
            "near_edge_only": {
                "T_ms": ne_t,
                "E_mJ": ne_e,
                "T_norm": ne_t / eo_t,
                "E_norm": None if ne_e is None or not eo_e else ne_e / eo_e,
            },
            "co_inference": rows,
        }
    return out


def costs_markdown(c: dict, taus: Sequence[float], per_frame: bool = False) -> str:
    """Tables of latency (ms) and energy (mJ) per batch (or per frame: divided by B), normalised to
    Edge-Only in brackets."""
    div, unit = (c["batch"], "frame") if per_frame else (1, "batch")

    def cell(r: dict) -> str:
        t = f"{r['T_ms'] / div:.{2 if per_frame else 1}f} ms ({r['T_norm']:.2f})"
        e = "" if r.get("E_mJ") is None else f", {r['E_mJ'] / div:.{2 if per_frame else 0}f} mJ ({r['E_norm']:.2f})"
        return t + e

    L = [
        f"Batch B={c['batch']}; edge {c['edge_device']} runs {c['edge_model']}, near-edge {c['near_device']}. "
        f"Cells: latency, energy per {unit} (normalised to Edge-Only of the reference generalist).",
        f"Energy: edge {c['energy_source']['edge'] or 'none (no reader, no stated power)'}; "
        f"near-edge {c['energy_source']['near_edge'] or 'none (no reader, no stated power)'}.",
        "",
    ]
    L += ["| scenario | " + " | ".join(f"tau={t:g}" for t in taus) + " |", "| --- " * (len(taus) + 1) + "|"]
    for nm, m in c["models"].items():
        L.append(f"| Edge-Only {m['reference']} | " + " | ".join(cell(m["edge_only"]) for _ in taus) + " |")
        L.append(f"| Near-Edge-Only {m['reference']} | " + " | ".join(cell(m["near_edge_only"]) for _ in taus) + " |")
        L.append(f"| Co-inference {c['edge_model']}->{nm} | " + " | ".join(cell(m["co_inference"][t]) for t in taus) + " |")
    return "\n".join(L) + "\n"
