"""Value tests for the evaluation metrics and the comparison verdict.

Every expected value is worked out by hand in the comments (tiny inputs) or by a brute-force loop written
here, never by calling the function under test or the library function it wraps.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from maskclip_bench.evaluators.linprobe import evaluate_linear_probe, select_C, topk_accuracy
from maskclip_bench.evaluators.zeroshot import zeroshot_metrics
from maskclip_bench.results.chance import recall_at_k_chance, topk_accuracy_chance
from maskclip_bench.results.comparison import verdict

# ---------------------------------------------------------------- top-k accuracy (linear probe)


def test_topk_accuracy_with_k_below_the_class_count():
    # columns are the classes 10, 20, 30, 40 (not 0..3: the label must be looked up through `classes`)
    classes = np.array([10, 20, 30, 40])
    proba = np.array([[0.1, 0.5, 0.3, 0.1],   # order 20, 30, then 10 / 40 tied
                      [0.4, 0.3, 0.2, 0.1],   # order 10, 20, 30, 40
                      [0.2, 0.1, 0.3, 0.4],   # order 40, 30, 10, 20
                      [0.25, 0.25, 0.25, 0.25]])  # all tied: the first columns win (stable order)
    labels = np.array([30, 30, 20, 20])
    # top-1: 20, 10, 40, 10 -> no hit
    assert topk_accuracy(proba, classes, labels, 1) == 0.0
    # top-2: {20,30} hit, {10,20} miss, {40,30} miss, {10,20} hit
    assert topk_accuracy(proba, classes, labels, 2) == 0.5
    # top-3: {20,30,10} hit, {10,20,30} hit, {40,30,10} miss, {10,20,30} hit
    assert topk_accuracy(proba, classes, labels, 3) == 0.75
    assert topk_accuracy(proba, classes, labels, 4) == 1.0
    assert topk_accuracy(proba, classes, labels, 5) == 1.0  # k above the class count: every class


# ---------------------------------------------------------------- linear probe: C selection, balanced recall


def test_select_C_picks_the_best_and_the_smallest_on_ties():
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert select_C(grid, [0.2, 0.5, 0.9, 0.7, 0.3]) == 0.1
    # a tie at the top between 1e-2 and 1.0: the strongest regularisation (smallest C) wins
    assert select_C(grid, [0.2, 0.8, 0.6, 0.8, 0.1]) == 0.01
    # the order of the grid does not matter
    assert select_C([10.0, 1.0, 1e-2, 1e-1, 1e-3], [0.1, 0.8, 0.8, 0.6, 0.2]) == 0.01
    assert select_C([5.0], [0.0]) == 5.0
    with pytest.raises(ValueError):
        select_C([1.0, 2.0], [0.5])


def _regularisation_task(seed: int = 0):
    """One informative dimension among 20; the train split is 70 % class 0, validation and test are balanced.

    The strongest regularisation leaves only the intercept and predicts the majority class (validation 0.5);
    weak regularisation fits the noise dimensions: validation accuracy peaks in between.
    """
    rng = np.random.default_rng(seed)

    def split(n: int, share_of_class_0: float):
        y = (np.arange(n) >= share_of_class_0 * n).astype(int)
        x = rng.normal(size=(n, 20))
        x[:, 0] += 1.5 * (2 * y - 1)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    return split(30, 0.7), split(100, 0.5), split(50, 0.5)


def test_linear_probe_C_is_the_brute_force_best_on_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = _regularisation_task()
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    # Brute force: one cold-started fit per C (the probe warm-starts its sweep; the optimum is the same).
    scaler = StandardScaler().fit(x_tr.numpy())
    acc = []
    for C in grid:
        fit = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(x_tr.numpy()), y_tr.numpy())
        acc.append(float((fit.predict(scaler.transform(x_val.numpy())) == y_val.numpy()).mean()))
    best = max(acc)
    expected = min(C for C, a in zip(grid, acc) if a == best)
    worst = min(C for C, a in zip(grid, acc) if a == min(acc))
    assert expected != worst and acc[grid.index(expected)] > min(acc) + 0.2  # the test can tell them apart
    metrics = evaluate_linear_probe(x_tr, y_tr, x_val, y_val, x_te, y_te, C_grid=grid, max_iter=5000)
    assert metrics["lp_C"] == expected, (acc, metrics)


def test_linear_probe_reports_balanced_recall_not_accuracy():
    # Three classes far apart; the probe is certain where a test point sits on a class centre.
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    rng = np.random.default_rng(0)
    y_tr = np.repeat([0, 1, 2], 20)
    x_tr = centres[y_tr] + rng.normal(scale=0.5, size=(60, 2))
    y_val = np.repeat([0, 1, 2], 5)
    x_val = centres[y_val] + rng.normal(scale=0.5, size=(15, 2))
    # Test: 8 of class 0 on its centre (right), 2 of class 1 on class 2's centre (wrong), 1 of class 2 (right).
    y_te = np.array([0] * 8 + [1] * 2 + [2])
    x_te = np.concatenate([np.repeat(centres[[0]], 8, 0), np.repeat(centres[[2]], 2, 0), centres[[2]]])
    metrics = evaluate_linear_probe(x_tr, y_tr, x_val, y_val, x_te, y_te, C_grid=[1.0])
    assert metrics["lp_acc1"] == pytest.approx(9 / 11)  # 8 + 0 + 1 right of 11
    assert metrics["lp_mean_per_class_recall"] == pytest.approx((8 / 8 + 0 / 2 + 1 / 1) / 3)  # 2/3
    assert metrics["lp_acc5"] == 1.0  # top-min(5, 3): all 3 classes


def test_linear_probe_standardises_features_and_uses_the_given_grid():
    # The only informative dimension is 1000x smaller than the noise dimensions. Standardised (CLIP's protocol),
    # C = 0.05 separates the classes; on raw features that penalty zeroes its weight and the probe is at chance.
    rng = np.random.default_rng(0)

    def split(n: int):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 4))
        x[:, 0] = 1e-3 * (2 * y - 1 + 0.2 * rng.normal(size=n))
        return x, y

    metrics = evaluate_linear_probe(*split(60), *split(40), *split(60), C_grid=[0.05])
    assert metrics["lp_C"] == 0.05 and metrics["lp_acc1"] >= 0.95
    # no grid given: the default log-spaced one, 1e-4 .. 1e4
    default = evaluate_linear_probe(*split(60), *split(40), *split(60))
    assert default["lp_C"] in [10.0 ** e for e in range(-4, 5)]


def test_linear_probe_accepts_tensors_that_require_grad():
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = _regularisation_task()
    plain = evaluate_linear_probe(x_tr, y_tr, x_val, y_val, x_te, y_te, C_grid=[1.0])
    metrics = evaluate_linear_probe(x_tr.clone().requires_grad_(), y_tr, x_val.clone().requires_grad_(), y_val,
                                    x_te.clone().requires_grad_(), y_te, C_grid=[1.0])
    # The property: a feature tensor that requires grad is probed exactly as its plain values are (a path that
    # mixed up splits or labels for such inputs would move these), and the task is not degenerate.
    assert metrics == plain and 0.0 < plain["lp_acc1"] < 1.0


# ---------------------------------------------------------------- zero-shot metrics from logits


def test_zeroshot_single_label_metrics_by_hand():
    # 6 classes (so acc5 is a real top-5), 5 samples
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5],    # argmax 0; label 0: hit
                           [1.0, 9, 2, 3, 4, 5],    # argmax 1; label 0: miss top-1, 0 is last: top-5 miss
                           [5.0, 4, 3, 2, 1, 9],    # argmax 5; label 1: top-5 hit (rank 2)
                           [1.0, 2, 9, 3, 4, 5],    # argmax 2; label 2: hit
                           [0.0, 1, 2, 3, 4, 9]])   # argmax 5; label 3: top-5 hit (rank 3)
    targets = torch.tensor([0, 0, 1, 2, 3])
    metrics = zeroshot_metrics(logits, targets, n_classes=6)
    assert metrics["acc1"] == pytest.approx(2 / 5)
    assert metrics["acc5"] == pytest.approx(4 / 5)
    # per-class recall over the classes present: class 0: 1/2, class 1: 0/1, class 2: 1/1, class 3: 0/1
    assert metrics["mean_per_class_recall"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    # macro F1 over the classes present (0-3; class 5 is predicted twice but never true, so it adds no term):
    # class 0: P 1/1, R 1/2 -> F1 2/3; class 1: no hit -> 0; class 2: P 1, R 1 -> 1; class 3: no hit -> 0
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)


def test_zeroshot_acc5_below_five_classes_is_top_all():
    logits = torch.tensor([[3.0, 2, 1], [1.0, 2, 3], [2.0, 3, 1]])
    targets = torch.tensor([2, 0, 2])  # every label ranked last or in the middle: acc1 0
    metrics = zeroshot_metrics(logits, targets, n_classes=3)
    assert metrics["acc1"] == 0.0 and metrics["acc5"] == 1.0


def _brute_force_average_precision(scores: list[float], relevant: list[int]) -> float:
    """AP = mean over the positives of the precision at the positive's rank (scores sorted descending)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_zeroshot_multilabel_mean_average_precision():
    logits = torch.tensor([[0.9, 0.2, 0.5],
                           [0.8, 0.7, 0.1],
                           [0.3, 0.6, 0.2],
                           [0.1, 0.4, 0.9]])
    targets = torch.tensor([[1, 0, 0],
                            [0, 0, 1],
                            [1, 1, 0],
                            [0, 1, 1]])
    # class 0: ranking s0(+) s1 s2(+) s3 -> (1/1 + 2/3) / 2 = 5/6
    # class 1: ranking s1 s2(+) s3(+) s0 -> (1/2 + 2/3) / 2 = 7/12
    # class 2: ranking s3(+) s0 s2 s1(+) -> (1/1 + 2/4) / 2 = 3/4
    expected = (5 / 6 + 7 / 12 + 3 / 4) / 3
    columns = [_brute_force_average_precision(logits[:, c].tolist(), targets[:, c].tolist()) for c in range(3)]
    assert columns == pytest.approx([5 / 6, 7 / 12, 3 / 4])
    metrics = zeroshot_metrics(logits, targets, n_classes=3)
    assert set(metrics) == {"mean_average_precision"}
    assert metrics["mean_average_precision"] == pytest.approx(expected)


# ---------------------------------------------------------------- chance levels


def test_chance_levels_against_brute_force_enumeration():
    assert topk_accuracy_chance(10) == 0.1 and topk_accuracy_chance(100, 5) == 0.05 and topk_accuracy_chance(3, 5) == 1
    for n, m, k in ((5, 1, 1), (5, 2, 2), (6, 3, 2), (4, 1, 4), (5, 2, 7)):
        # every ordering of n candidates, the first m being the positives
        orders = list(itertools.permutations(range(n)))
        hits = sum(any(c < m for c in order[:k]) for order in orders)
        assert recall_at_k_chance(n, m, k) == pytest.approx(hits / len(orders)), (n, m, k)
    assert recall_at_k_chance(300, 1, 5) == pytest.approx(5 / 300)
    assert recall_at_k_chance(3, 3, 1) == 1.0 and topk_accuracy_chance(1) == 1.0  # nothing to get wrong
    for bad in ((5, 0, 1), (5, 6, 1), (5, 1, 0)):
        with pytest.raises(ValueError, match="need 0 < n_positives <= n_candidates and k >= 1"):
            recall_at_k_chance(*bad)
    for bad in ((0, 1), (3, 0)):
        with pytest.raises(ValueError, match="need n_classes >= 1 and k >= 1"):
            topk_accuracy_chance(*bad)


# ---------------------------------------------------------------- comparison verdict


def _row(diff: float, clip_std: float, clip_n: int, mask_std: float, mask_n: int) -> pd.Series:
    return pd.Series({"diff": diff, "clip_std": clip_std, "clip_n": clip_n, "maskclip_std": mask_std,
                      "maskclip_n": mask_n})


def test_verdict_every_branch():
    # s.e. of the difference = sqrt(0.06**2 / 4 + 0.08**2 / 4) = sqrt(0.0009 + 0.0016) = 0.05; 2 s.e. = 0.1
    assert verdict(_row(0.11, 0.06, 4, 0.08, 4)) == "yes"
    assert verdict(_row(0.09, 0.06, 4, 0.08, 4)) == "within noise (|Δ| < 2 s.e.)"
    assert verdict(_row(-0.09, 0.06, 4, 0.08, 4)) == "within noise (|Δ| < 2 s.e.)"
    assert verdict(_row(-0.11, 0.06, 4, 0.08, 4)) == "no: reversed"
    # unequal seed counts: sqrt(0.06**2 / 9 + 0.08**2 / 4) = sqrt(0.0004 + 0.0016) = 0.0447; 2 s.e. = 0.0894
    assert verdict(_row(0.092, 0.06, 9, 0.08, 4)) == "yes"
    assert verdict(_row(0.087, 0.06, 9, 0.08, 4)) == "within noise (|Δ| < 2 s.e.)"
    # two seeds a side is enough for an error bar: sqrt(0.06**2 / 2 + 0.08**2 / 2) = sqrt(0.005) = 0.0707
    assert verdict(_row(0.15, 0.06, 2, 0.08, 2)) == "yes"
    assert verdict(_row(0.15, 0.06, 2, 0.08, 4)) == "yes" and verdict(_row(0.15, 0.06, 4, 0.08, 2)) == "yes"
    assert verdict(_row(-0.15, 0.06, 2, 0.08, 2)) == "no: reversed"
    # a side whose std is unknown (NaN) adds nothing to the s.e.: here sqrt(0.08**2 / 4) = 0.04
    assert verdict(_row(0.1, math.nan, 3, 0.08, 4)) == "yes"
    assert verdict(_row(0.07, math.nan, 3, 0.08, 4)) == "within noise (|Δ| < 2 s.e.)"
    # one seed on either side: no error bar, the sign only
    assert verdict(_row(0.5, math.nan, 1, 0.08, 4)) == "yes (one seed, no error bar)"
    assert verdict(_row(-0.5, 0.06, 4, math.nan, 1)) == "no (one seed, no error bar)"
    assert verdict(_row(0.0, math.nan, 1, math.nan, 1)) == "no (one seed, no error bar)"
    # exactly 2 s.e. is not enough either way: sqrt(0 / 4 + 2**2 / 4) = 1, so 2 s.e. = 2 (exact in floating point)
    assert verdict(_row(2.0, 0.0, 4, 2.0, 4)) == "within noise (|Δ| < 2 s.e.)"
    assert verdict(_row(-2.0, 0.0, 4, 2.0, 4)) == "within noise (|Δ| < 2 s.e.)"
    # several seeds that all agree exactly: no spread, so no error bar either
    assert verdict(_row(0.02, 0.0, 2, 0.0, 2)) == "yes (no spread over seeds, no error bar)"
    assert verdict(_row(0.02, 0.0, 3, 0.0, 3)) == "yes (no spread over seeds, no error bar)"
    assert verdict(_row(-0.02, 0.0, 3, 0.0, 3)) == "no (no spread over seeds, no error bar)"
    assert verdict(_row(math.nan, 0.06, 4, 0.08, 4)) == "not measured"
    assert verdict(pd.Series({"diff": None, "clip_std": 0.1, "clip_n": 3, "maskclip_std": 0.1, "maskclip_n": 3})) \
        == "not measured"


# ---------------------------------------------------------------- dense probe metrics


def test_confusion_matrix_ignores_out_of_range_and_ignore_labels():
    from maskclip_bench.evaluators.dense import confusion_matrix

    # target: 0, 1, 2 valid; -1, 3 (= num_classes) and 255 (ignore) must not count anywhere
    target = torch.tensor([0, 1, 2, -1, 3, 255, 1])
    pred = torch.tensor([0, 2, 2, 0, 1, 1, 1])
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in ((0, 0), (1, 2), (2, 2), (1, 1)):  # rows: target, columns: prediction
        expected[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, num_classes=3), expected)
    # with more than 255 classes, 255 is a class unless it is the ignore index (the default)
    many = confusion_matrix(torch.tensor([255, 7]), torch.tensor([255, 7]), num_classes=300)
    assert many.sum() == 1 and many[7, 7] == 1
    kept = confusion_matrix(torch.tensor([255, 7]), torch.tensor([255, 7]), num_classes=300, ignore_index=-100)
    assert kept.sum() == 2 and kept[255, 255] == 1


def test_segmentation_metrics_classes_with_one_pixel_and_empty_input():
    from maskclip_bench.evaluators.dense import segmentation_metrics

    # class 0: its 3 pixels right; class 1: its one pixel predicted as class 0 (a class of union exactly 1)
    confusion = torch.tensor([[3, 0, 0],
                              [1, 0, 0],
                              [0, 0, 0]])
    # IoU class 0: hits 3 / (row 3 + column 4 - 3) = 3/4; class 1: 0 / (1 + 0 - 0) = 0; class 2 absent (union 0)
    metrics = segmentation_metrics(confusion)
    assert metrics["miou"] == pytest.approx((3 / 4 + 0) / 2) and metrics["pixel_acc"] == pytest.approx(3 / 4)
    empty = segmentation_metrics(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_acc"])
