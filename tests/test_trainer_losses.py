"""Equations 1 to 3: omega(t), the sample weights and the loss on a hand-checked example."""

import math

import pytest
import torch

from trainer.losses import distill_loss, omega, sample_weights, weight_for


def test_omega_schedule():
    assert omega(0, 10, 4.0) == 1.0
    assert omega(10, 10, 4.0) == 4.0
    assert omega(5, 10, 4.0) == pytest.approx(2.5)
    assert omega(2.5, 10, 3.0) == pytest.approx(1.5)
    assert omega(20, 10, 4.0) == 4.0  # clamped at T
    assert weight_for("static", 0, 10, 4.0) == 4.0
    assert weight_for("progressive", 0, 10, 4.0) == 1.0
    assert weight_for("none", 7, 10, 4.0) == 1.0


def test_sample_weights():
    target = torch.tensor([True, False, True, False])  # D_I = classes 0 and 2
    y = torch.tensor([0, 1, 2, 3, 2])
    assert sample_weights(y, target, 2.5).tolist() == [2.5, 1.0, 2.5, 1.0, 2.5]


def test_loss_hand_checked():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # p = [1/4, 3/4], [3/4, 1/4]
    y = torch.tensor([1, 1])
    teacher = torch.tensor([1, 0])
    w = torch.tensor([2.0, 1.0])
    # sample 0: CE(y)=CE(teacher)=-log(3/4); sample 1: CE(y)=-log(1/4), CE(teacher)=-log(3/4)
    l0 = -math.log(0.75)
    l1 = 0.5 * -math.log(0.25) + 0.5 * -math.log(0.75)
    want = (2.0 * l0 + 1.0 * l1) / 2  # eq. 3 summed over the batch, divided by the batch size
    assert float(distill_loss(logits, y, teacher, w)) == pytest.approx(want, rel=1e-6)
    assert float(distill_loss(logits, y, None, None)) == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)


def test_uniform_control_weighs_every_sample_one():
    """The weight-1 control: same loss as plain distillation at every t, whatever the target mask."""
    mask = torch.tensor([True, False, True] + [False] * 7)
    y = torch.tensor([0, 1, 2, 3])
    logits, teacher = torch.randn(4, 10), torch.tensor([0, 2, 2, 5])
    for t in (0.0, 3.3, 10.0):
        w = sample_weights(y, mask, weight_for("uniform", t, 10, 14.0))
        assert torch.equal(w, torch.ones(4))
        assert torch.allclose(distill_loss(logits, y, teacher, w), distill_loss(logits, y, teacher))
    # while progressive and static do weigh the target samples (0 and 2)
    assert sample_weights(y, mask, weight_for("static", 0, 10, 14.0)).tolist() == [14.0, 1.0, 14.0, 1.0]


def test_warmup_in_steps_then_cosine_to_the_floor():
    from trainer.engine import lr_at

    assert lr_at(0, 100, 1.0, warm=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warm=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warm=10) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, warm=10) == pytest.approx(0.01, abs=1e-3)
    assert lr_at(0, 5, 1.0, warm=50) == pytest.approx(0.2)  # warm-up longer than the fit: capped at the fit


def test_a_claim_holds_above_its_target_with_every_seed_and_beyond_two_std():
    from trainer.claims import verdict

    assert verdict([3.5, 3.6, 3.4], 3.0) == "holds"
    assert verdict([3.5, 2.9, 3.7], 3.0) == "mixed"  # one seed below the target
    assert verdict([0.1, 2.0, 0.1], 0.0) == "mixed"  # every seed above 0, but the mean within 2 std
    assert verdict([2.9, 2.8], 3.0) == "does not hold"
    assert verdict([0.4], 0.0) == "holds"  # one seed: no spread to compare
