"""The paper's Algorithm 1, once: softmax, confidence, top-k classes -> subset indices -> expert key.

`decide` is what the edge node runs on every batch and what the offline sweep, the trainer's
report, the demo's exactness check and the tests run on stored logits: live equals offline by
construction (the same function, the same float64 softmax). `offline_labels` is the offline
labeller on top: given each frame's routed expert logits, the final label at any tau. Routing
does not depend on tau, so one expert evaluation per frame (the routed one) serves every tau."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, Mapping, Sequence

import numpy as np


def expert_key(subsets: Iterable[int]) -> str:
    """Canonical expert name: sorted 0-based subset indices joined by '-', e.g. '0-2'."""
    return "-".join(str(i) for i in sorted(set(int(s) for s in subsets)))


def parse_expert_key(key: str) -> tuple[int, ...]:
    """Inverse of expert_key; raises ValueError on anything that is not a canonical key."""
    parts = tuple(int(p) for p in key.split("-"))
    if any(p < 0 for p in parts) or expert_key(parts) != key:
        raise ValueError(f"not a canonical expert key: {key!r}")
    return parts


def route(topk_classes: Sequence[int], partition: Sequence[int]) -> str:
    """Algorithm 1, lines 6-12: the expert for the union of the top-k classes' subsets."""
    return expert_key(partition[int(c)] for c in topk_classes)


def required_experts(n_subsets: int, k: int) -> list[tuple[int, ...]]:
    """Every non-empty I with |I| <= k: sum_{i=1..k} C(S, i) experts."""
    return [c for size in range(1, k + 1) for c in combinations(range(n_subsets), size)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities per row, largest first (ties: lower index first)."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    return order[..., :k]


@dataclass
class Decision:
    """The edge half of Algorithm 1 for N frames (independent of tau except via `offloaded`)."""

    probs: np.ndarray  # float64 (N, C): softmax of the edge logits
    conf: np.ndarray  # float64 (N,): max softmax probability (line 2)
    edge_label: np.ndarray  # int (N,): argmax (line 4)
    topk: np.ndarray  # int (N, k): top-k classes, largest first, ties to the lower index (line 6)
    expert: np.ndarray  # object (N,): the routed expert key I (lines 7-12)

    def offloaded(self, tau: float) -> np.ndarray:
        """Line 3: conf >= tau stays at the edge; the rest goes to its expert."""
        return self.conf < tau


def decide(edge_logits: np.ndarray, partition: Sequence[int], k: int) -> Decision:
    """Algorithm 1, lines 1-2 and 6-12, for a batch of edge logits (N, C)."""
    probs = softmax(np.asarray(edge_logits, dtype=np.float64))
    top = topk(probs, k)
    part = np.asarray(partition)
    keys = np.array([expert_key(part[row]) for row in top], dtype=object)
    return Decision(probs, probs.max(axis=-1), probs.argmax(axis=-1), top, keys)


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


def algorithm1(
    edge_logits: np.ndarray,
    partition: Sequence[int],
    k: int,
    tau: float,
    expert_logits: Mapping[str, np.ndarray] | np.ndarray,
) -> dict:
    """Final labels, source, expert and offload mask per frame; expert logits per key or already routed."""
    d = decide(edge_logits, partition, k)
    routed = expert_logits if isinstance(expert_logits, np.ndarray) else routed_logits(d, expert_logits)
    labels, off = offline_labels(d, routed, tau)
    return {"labels": labels, "offloaded": off, "expert": np.where(off, d.expert, None), "decision": d}
