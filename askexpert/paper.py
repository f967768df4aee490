"""The paper's published numbers that our reports print beside their own (trainer and evaluation)."""

from __future__ import annotations

PAPER_TAUS = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5)
# Table 4 of the paper (CIFAR-100, DeiT-3H edge): offload proportion alpha(tau) in percent.
PAPER_ALPHA_PCT = {0.99: 74.7, 0.9: 46.2, 0.8: 35.8, 0.7: 27.8, 0.6: 20.8, 0.5: 13.3}
# Table 5 of the paper: DeiT-3H top-k accuracy (%) on CIFAR-100 and ImageNet.
PAPER_TOPK = {"CIFAR-100": (80.16, 89.73, 93.40), "ImageNet": (74.52, 84.62, 88.50)}
