"""The paper's Top-k routing (Algorithm 1): classes -> subset indices -> expert key."""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

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
