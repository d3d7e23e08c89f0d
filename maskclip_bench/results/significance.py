"""Sampling noise of the evaluation metrics: how far a fraction measured on n test samples moves by chance.

Zero-shot accuracy, recall@k and linear-probe accuracy are fractions of the n test samples (recall with one caption
per image). Measured once, such a fraction has the binomial standard error sqrt(p (1 - p) / n); two models scored on
n samples each differ by more than noise when the gap exceeds about two standard errors of the difference. The
difference's error below treats the two sets as independent, which overstates it for two models scored on the same
images (a paired test would be tighter): a gap it calls real is real.
"""
from __future__ import annotations

import math


def binomial_se(p: float, n: int) -> float:
    """Standard error of a fraction `p` measured on `n` samples: sqrt(p (1 - p) / n) (p clipped to [0, 1])."""
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / max(n, 1))


def difference_se(p1: float, p2: float, n: int) -> float:
    """Standard error of p2 - p1 for two fractions on `n` samples each, as independent: sqrt(se1^2 + se2^2)."""
    return math.hypot(binomial_se(p1, n), binomial_se(p2, n))
