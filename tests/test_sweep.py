"""The offline sweep on fixed logits against hand-computed values (Algorithm 1 exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from askexpert.routing import algorithm1, decide, offline_labels, routed_logits
from evaluation.sweep import sweep, to_markdown

# 4 classes, partition S(c): classes 0,1 -> subset 0; class 2 -> 1; class 3 -> 2. k = 2.
PART = [0, 0, 1, 2]
L = np.log


def probs_logits(*p):
    return L(np.array(p, dtype=np.float64))


# edge probabilities per frame (logits = log p, so softmax gives p back)
EDGE = np.stack(
    [
        probs_logits(0.95, 0.03, 0.01, 0.01),  # f0: conf .95, top2 {0,1} -> expert "0"
        probs_logits(0.10, 0.85, 0.04, 0.01),  # f1: conf .85, top2 {1,0} -> "0"
        probs_logits(0.05, 0.25, 0.65, 0.05),  # f2: conf .65, top2 {2,1} -> "0-1"
        probs_logits(0.40, 0.05, 0.10, 0.45),  # f3: conf .45, top2 {3,0} -> "0-2"
        probs_logits(0.30, 0.20, 0.20, 0.30),  # f4: tie .30/.30 -> lower index first: {0,3} -> "0-2"
    ]
)
Y = np.array([0, 0, 1, 0, 3])
# expert logits per key over all frames (only the routed one matters per frame)
E = {key: np.zeros((5, 4)) for key in ["0", "1", "2", "0-1", "0-2", "1-2"]}
E["0"][0] = [0, 5, 0, 0]  # f0 would become 1 (wrong), but f0 stays at the edge unless tau > .95
E["0"][1] = [5, 0, 0, 0]  # f1 -> 0 (right)
E["0-1"][2] = [0, 5, 0, 0]  # f2 -> 1 (right)
E["0-2"][3] = [0, 0, 0, 5]  # f3 -> 3 (wrong)
E["0-2"][4] = [0, 0, 0, 5]  # f4 -> 3 (right)
G4 = np.zeros((5, 4))
G4[:, 0] = 1  # a "4H" generalist that always says 0: right on f0, f1, f3


def test_routing_and_confidence():
    d = decide(EDGE, PART, 2)
    assert list(d.expert) == ["0", "0", "0-1", "0-2", "0-2"]
    assert np.allclose(d.conf, [0.95, 0.85, 0.65, 0.45, 0.30])
    assert list(d.edge_label) == [0, 1, 2, 3, 0]


def test_conf_equal_to_tau_stays_at_edge():
    edge = np.stack([probs_logits(0.5, 0.5, 0.0 + 1e-300, 1e-300)])
    d = decide(edge, PART, 2)
    assert d.conf[0] == 0.5 and not d.offloaded(0.5)[0] and d.offloaded(0.5000001)[0]


@pytest.mark.parametrize(
    "tau,labels,alpha,acc",
    [
        (0.99, [1, 0, 1, 3, 3], 1.0, 3 / 5),
        (0.9, [0, 0, 1, 3, 3], 0.8, 4 / 5),
        (0.8, [0, 1, 1, 3, 3], 0.6, 3 / 5),
        (0.6, [0, 1, 2, 3, 3], 0.4, 2 / 5),
        (0.5, [0, 1, 2, 3, 3], 0.4, 2 / 5),
        (0.29, [0, 1, 2, 3, 0], 0.0, 1 / 5),
    ],
)
def test_algorithm1_hand_computed(tau, labels, alpha, acc):
    out = algorithm1(EDGE, PART, 2, tau, E)
    assert list(out["labels"]) == labels
    assert out["offloaded"].mean() == pytest.approx(alpha)
    d = decide(EDGE, PART, 2)
    lab2, off2 = offline_labels(d, routed_logits(d, E), tau)
    assert list(lab2) == labels
    r = sweep(EDGE, Y, PART, 2, [tau], generalists={"4H": G4}, specialists={"experts": E})
    assert r["alpha"][tau] == pytest.approx(alpha)
    assert r["specialist_coinference"]["experts"][tau] == pytest.approx(acc)


def test_sweep_scenarios_and_recall():
    r = sweep(EDGE, Y, PART, 2, [0.99, 0.9, 0.8, 0.7, 0.6, 0.5], generalists={"4H": G4}, specialists={"experts": E})
    assert r["edge_only"] == {"3H": pytest.approx(1 / 5), "4H": pytest.approx(3 / 5)}
    assert r["near_edge_only"]["4H"] == pytest.approx(3 / 5)
    # generalist co-inference at .9: f1..f4 offloaded to "always 0": f0 edge 0 ok, f1 ok, f2 wrong, f3 ok, f4 wrong
    assert r["generalist_coinference"]["4H"][0.9] == pytest.approx(3 / 5)
    # at .7: f2..f4 offloaded: f0 ok, f1 (edge 1) wrong, f2 wrong, f3 ok, f4 wrong
    assert r["generalist_coinference"]["4H"][0.7] == pytest.approx(2 / 5)
    assert r["expert_load"][0.7] == {"0-1": 1, "0-2": 2}
    # top-k of the edge: top1 right only on f4? edge labels [0,1,2,3,0] vs Y [0,0,1,0,3]: f0 -> 1/5
    assert r["recall"]["top1"] == pytest.approx(1 / 5)
    # top2 sets {0,1},{1,0},{2,1},{3,0},{0,3}: f0 f1 f2 f3 f4 all hit -> 5/5
    assert r["recall"]["top2"] == pytest.approx(1.0)
    assert r["recall"]["gap_2_1"] == pytest.approx(4 / 5)
    md = to_markdown(r)
    assert "Table 4" in md and "Specialist Co-inference 3H->experts" in md


def test_routed_array_input_equals_dict_input():
    d = decide(EDGE, PART, 2)
    routed = routed_logits(d, E)
    a = algorithm1(EDGE, PART, 2, 0.8, routed)["labels"]
    b = algorithm1(EDGE, PART, 2, 0.8, E)["labels"]
    assert list(a) == list(b)
    with pytest.raises(KeyError):
        routed_logits(d, {"0": E["0"]})
