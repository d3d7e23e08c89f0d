"""Chance levels of evaluation metrics: what a model that ranks at random scores in expectation.

A regression check whose tolerance reaches down to chance cannot tell a working model from a broken one,
so the CI baseline records each metric's chance level next to its value (see ``maskclip_bench.experiments.regression``).
"""
from __future__ import annotations

from math import comb


def topk_accuracy_chance(n_classes: int, k: int = 1) -> float:
    """Top-k accuracy of a uniformly random ranking of `n_classes` classes: min(k, n) / n."""
    if n_classes < 1 or k < 1:
        raise ValueError(f"need n_classes >= 1 and k >= 1, got {n_classes}, {k}")
    return min(k, n_classes) / n_classes


def recall_at_k_chance(n_candidates: int, n_positives: int, k: int) -> float:
    """Probability that a random ranking of `n_candidates` puts at least one of `n_positives` in its top k.

    1 - C(n - m, k) / C(n, k): the top k drawn without replacement miss every positive.
    """
    if not 0 < n_positives <= n_candidates or k < 1:
        raise ValueError(f"need 0 < n_positives <= n_candidates and k >= 1, got {n_positives}, {n_candidates}, {k}")
    k = min(k, n_candidates)
    return 1.0 - comb(n_candidates - n_positives, k) / comb(n_candidates, k)
