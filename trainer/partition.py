"""Partitions of the classes into S subsets, and the expert list (paper section 4.3).

- `superclass`: whole superclasses go to S balanced subsets (CIFAR-100: 20 superclasses), or
  Fashion-MNIST's documented grouping by garment kind (`trainer.export.FASHION_MNIST_PARTITION`).
- `paper`: the paper's own Table 7 assignments of CIFAR-100's 20 superclasses for S = 4, 6, 8.
- `confusion`: our addition. Classes the generalist confuses on the validation split go to the same
  subset, so that a top-k set tends to stay inside one subset (fewer pair experts are used).
"""

from __future__ import annotations

import math

import numpy as np

from askexpert.routing import expert_key, required_experts

__all__ = [
    "superclass_partition",
    "paper_partition",
    "confusion_partition",
    "confusion_matrix",
    "topk_within_subset_rate",
    "expert_list",
    "expert_key",
]


def expert_list(n_subsets: int, k: int) -> list[tuple[int, ...]]:
    """Every non-empty I with |I| <= k, sum_{i=1..k} C(S, i) of them."""
    if not 1 <= k <= n_subsets:
        raise ValueError(f"need 1 <= k <= S, got k={k}, S={n_subsets}")
    return required_experts(n_subsets, k)


def superclass_partition(superclass: np.ndarray | list[int], n_subsets: int) -> list[int]:
    """Group whole superclasses into `n_subsets` subsets balanced by class count.

    Superclasses are taken largest first (ties: lower index first) and each goes to the subset with
    the fewest classes so far (ties: lower subset index): the longest-processing-time rule.
    Returns the subset index of each class.
    """
    superclass = np.asarray(superclass, dtype=np.int64)
    supers = np.unique(superclass)
    if n_subsets < 1 or n_subsets > len(supers):
        raise ValueError(f"cannot split {len(supers)} superclasses into {n_subsets} subsets")
    sizes = {int(s): int((superclass == s).sum()) for s in supers}
    load = [0] * n_subsets
    assign: dict[int, int] = {}
    for s in sorted(sizes, key=lambda s: (-sizes[s], s)):
        j = min(range(n_subsets), key=lambda j: (load[j], j))
        assign[s] = j
        load[j] += sizes[s]
    return [assign[int(s)] for s in superclass]


# The paper's Table 7 (Appendix A.3), verbatim: for S = 4, 6, 8, each subset's superclasses, as the
# paper names them ("superclasses were randomly assigned to each partition").
TABLE7: dict[int, list[list[str]]] = {
    4: [
        ["Fruit and vegetables", "People", "Large man-made outdoor things", "Household electrical devices", "Vehicles 2"],
        ["Household furniture", "Vehicles 1", "Invertebrates", "Reptiles", "Medium-sized mammals"],
        ["Fish", "Large omnivores and herbivores", "Large natural outdoor scenes", "Trees", "Flowers"],
        ["Large carnivores", "Aquatic mammals", "Insects", "Food containers", "Small mammals"],
    ],
    6: [
        ["Fruit and vegetables", "People", "Household electrical devices", "Vehicles 2"],
        ["Vehicles 1", "Large man-made outdoor things", "Invertebrates", "Reptiles"],
        ["Household furniture", "Medium-sized mammals", "Trees"],
        ["Fish", "Large omnivores and herbivores", "Large natural outdoor scenes"],
        ["Insects", "Small mammals", "Flowers"],
        ["Large carnivores", "Aquatic mammals", "Food containers"],
    ],
    8: [
        ["People", "Household electrical devices", "Vehicles 2"],
        ["Fruit and vegetables", "Large man-made outdoor things", "Invertebrates"],
        ["Household furniture", "Vehicles 1", "Reptiles"],
        ["Large natural outdoor scenes", "Medium-sized mammals", "Trees"],
        ["Fish", "Large omnivores and herbivores"],
        ["Small mammals", "Flowers"],
        ["Insects", "Large carnivores"],
        ["Aquatic mammals", "Food containers"],
    ],
}
# The paper's names that differ from CIFAR-100's coarse label names (meta / coarse_label_names.txt);
# every other name is CIFAR's in lower case with underscores.
_CIFAR_NAME = {"Invertebrates": "non-insect_invertebrates", "Medium-sized mammals": "medium_mammals"}


def cifar_superclass_name(paper_name: str) -> str:
    """'Large man-made outdoor things' -> 'large_man-made_outdoor_things' (CIFAR-100's coarse name)."""
    return _CIFAR_NAME.get(paper_name, paper_name.lower().replace(" ", "_"))


def paper_partition(superclass: np.ndarray | list[int], superclass_names: list[str], n_subsets: int) -> list[int]:
    """Table 7's assignment for S = 4, 6 or 8: the subset index of each class, by its superclass's
    name. Refuses a data set whose superclasses are not CIFAR-100's 20, naming what is missing."""
    if n_subsets not in TABLE7:
        raise ValueError(f"the paper's Table 7 has S = 4, 6, 8, not {n_subsets}: use --partition superclass")
    subset_of = {cifar_superclass_name(n): s for s, names in enumerate(TABLE7[n_subsets]) for n in names}
    missing = sorted(set(subset_of) - set(superclass_names))
    extra = sorted(set(superclass_names) - set(subset_of))
    if missing or extra:
        raise ValueError(f"--partition paper needs CIFAR-100's 20 superclasses; missing {missing[:4]}, unknown {extra[:4]}")
    return [subset_of[superclass_names[int(s)]] for s in superclass]


def confusion_matrix(labels: np.ndarray, logits: np.ndarray, n_classes: int) -> np.ndarray:
    """Row-normalised confusion of the top-1 predictions (rows: true class)."""
    pred = np.asarray(logits).argmax(axis=1)
    cm = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(cm, (np.asarray(labels), pred), 1.0)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)


def _topk_affinity(labels: np.ndarray, logits: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """How often two classes appear together in a validation sample's top-k (plus top-1 confusion)."""
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, : max(k, 2)]
    aff = np.zeros((n_classes, n_classes), dtype=np.float64)
    for i in range(order.shape[1]):
        for j in range(i + 1, order.shape[1]):
            np.add.at(aff, (order[:, i], order[:, j]), 1.0)
    aff = aff + aff.T
    cm = confusion_matrix(labels, logits, n_classes) * np.bincount(labels, minlength=n_classes)[:, None]
    aff += cm + cm.T
    np.fill_diagonal(aff, 0.0)
    return aff


def confusion_partition(labels: np.ndarray, logits: np.ndarray, n_subsets: int, k: int = 2) -> list[int]:
    """Balanced agglomerative grouping of classes by validation confusion.

    Affinity(a, b) = how often a and b share a validation sample's top-max(k, 2) set, plus how often
    one is predicted for the other. Starting from one group per class, merge the pair of groups with
    the largest total affinity whose merged size stays within ceil(C / S), until S groups remain (the
    cap relaxes by one if no merge fits). Groups are numbered by their smallest class.
    """
    n_classes = int(np.asarray(logits).shape[1])
    if not 1 <= n_subsets <= n_classes:
        raise ValueError(f"cannot split {n_classes} classes into {n_subsets} subsets")
    aff = _topk_affinity(np.asarray(labels), logits, n_classes, k)
    groups: list[list[int]] = [[c] for c in range(n_classes)]
    cap = math.ceil(n_classes / n_subsets)
    while len(groups) > n_subsets:
        best, best_pair = -1.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if len(groups[a]) + len(groups[b]) > cap:
                    continue
                score = aff[np.ix_(groups[a], groups[b])].sum()
                if score > best:
                    best, best_pair = score, (a, b)
        if best_pair is None:
            cap += 1
            continue
        a, b = best_pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    groups.sort(key=min)
    part = [0] * n_classes
    for g, members in enumerate(groups):
        for c in members:
            part[c] = g
    return part


def topk_within_subset_rate(logits: np.ndarray, partition: list[int], k: int = 2) -> float:
    """Fraction of samples whose top-k classes all fall into one subset (routed to a single expert)."""
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]
    sub = np.asarray(partition)[order]
    return float((sub == sub[:, :1]).all(axis=1).mean())


def subset_names_for(
    partition: list[int], classes: list[str], superclass_names: list[str] | None = None, superclass: list[int] | None = None
) -> list[str]:
    """Readable subset names: their superclasses, else their first classes."""
    n = max(partition) + 1
    names = []
    for s in range(n):
        members = [c for c, p in enumerate(partition) if p == s]
        if superclass_names and superclass is not None:
            sup = sorted({int(superclass[c]) for c in members})
            label = "+".join(superclass_names[i] for i in sup[:3]) + ("+..." if len(sup) > 3 else "")
        else:
            label = "+".join(classes[c].replace("/", "-").replace(" ", "-") for c in members[:3])
            label += "+..." if len(members) > 3 else ""
        names.append(label)
    return names
