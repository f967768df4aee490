"""Partitions and the expert list for given S and k."""

import numpy as np
import pytest

from trainer.partition import (
    confusion_partition,
    expert_list,
    superclass_partition,
    topk_within_subset_rate,
)


@pytest.mark.parametrize("S,k,n", [(4, 1, 4), (4, 2, 10), (6, 2, 21), (8, 2, 36), (4, 3, 14)])
def test_expert_list_counts(S, k, n):
    experts = expert_list(S, k)
    assert len(experts) == n
    assert len(set(experts)) == n
    assert all(1 <= len(e) <= k and list(e) == sorted(e) for e in experts)


def test_expert_list_s4_k2():
    assert expert_list(4, 2) == [(0,), (1,), (2,), (3,), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with pytest.raises(ValueError):
        expert_list(3, 4)


def test_superclass_partition_is_balanced_and_keeps_superclasses_whole():
    superclass = np.repeat(np.arange(20), 5)  # CIFAR-100 shape: 20 superclasses of 5 classes
    for S in (4, 5):
        p = np.array(superclass_partition(superclass, S))
        assert sorted(np.bincount(p)) == [100 // S] * S
        for s in range(20):
            assert len(set(p[superclass == s])) == 1
    p6 = np.array(superclass_partition(superclass, 6))
    assert sorted(np.bincount(p6)) == [15, 15, 15, 15, 20, 20]


def test_confusion_partition_groups_confused_classes():
    rng = np.random.default_rng(0)
    n, C = 2000, 6
    y = rng.integers(0, C, n)
    logits = rng.normal(0, 0.1, (n, C))
    logits[np.arange(n), y] += 3.0
    partner = {0: 3, 3: 0, 1: 4, 4: 1, 2: 5, 5: 2}  # each class is confused with one partner
    for i in range(n):
        logits[i, partner[y[i]]] += 2.5
    p = confusion_partition(y, logits, 3, k=2)
    assert p[0] == p[3] and p[1] == p[4] and p[2] == p[5]
    assert len(set(p)) == 3
    assert topk_within_subset_rate(logits, p, 2) > 0.95
    assert topk_within_subset_rate(logits, [0, 1, 2, 1, 2, 0], 2) < 0.1


def test_fashion_mnist_grouping():
    from trainer.export import FASHION_MNIST_PARTITION, FASHION_MNIST_SUBSETS

    assert len(FASHION_MNIST_PARTITION) == 10 and len(FASHION_MNIST_SUBSETS) == 4
    assert sorted(set(FASHION_MNIST_PARTITION)) == [0, 1, 2, 3]
