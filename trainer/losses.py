"""Progressive specialist distillation, the paper's equations 1 to 3.

    omega(t)  = 1 + (t / T) (W - 1)                                   (1)
    w_i(t)    = omega(t) if y_i is a class of D_I else 1              (2)
    L(t)      = sum_i w_i(t) [ CE(m(x_i), y_i)/2 + CE(m(x_i), argmax M(x_i))/2 ]   (3)

Normalisation: a mini-batch B contributes (1/|B|) sum_{i in B} w_i [...], i.e. eq. 3 summed over
the batch and divided by the (constant) batch size, NOT by sum w_i: the target samples' weight
grows in absolute terms, as in the paper's sum. (With AdamW a constant factor on the loss makes
no difference; dividing by sum w_i instead would hide the schedule's growth inside each batch.)

t runs over training progress in epochs: t = epoch + step/steps_per_epoch, from 0 at the first step
to T at the end (schedule "step", the default), or t = epoch index 0..T-1 (schedule "epoch", the
paper's literal per-epoch reading, which never reaches W).

Static experts (the baseline): the same data, init, teacher labels, epochs and optimiser, but the
weight of target samples is the constant W from the first step (w_i = W for D_I, 1 otherwise).
Uniform experts (our control): the same again with weight 1 for every sample, i.e. the extra
training and the specialist teacher without any specialisation by weighting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def omega(t: float, total: float, max_weight: float) -> float:
    """Equation 1: 1 at t = 0, W at t = T (clamped to [0, T])."""
    if total <= 0:
        raise ValueError("T must be positive")
    t = min(max(float(t), 0.0), float(total))
    return 1.0 + (t / total) * (max_weight - 1.0)


def sample_weights(labels: torch.Tensor, target_mask: torch.Tensor, w: float) -> torch.Tensor:
    """Equation 2: w for samples whose class is in D_I (target_mask[class] is True), 1 otherwise."""
    in_target = target_mask.to(labels.device)[labels]
    return torch.where(in_target, torch.as_tensor(w, dtype=torch.float32, device=labels.device), 1.0)


def distill_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_labels: torch.Tensor | None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Equation 3 for one batch, divided by the batch size.

    Without teacher labels this is weighted cross-entropy with the labels (teacher pre-training).
    """
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    if teacher_labels is not None:
        ce = 0.5 * ce + 0.5 * F.cross_entropy(logits.float(), teacher_labels, reduction="none")
    if weights is not None:
        ce = ce * weights
    return ce.sum() / logits.shape[0]


def weight_for(schedule: str, t: float, total: float, max_weight: float) -> float:
    """The target-sample weight at progress t for 'progressive', 'static', 'uniform' or 'none' (plain)."""
    if schedule == "progressive":
        return omega(t, total, max_weight)
    if schedule == "static":
        return float(max_weight)
    if schedule in ("uniform", "none"):
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}")
