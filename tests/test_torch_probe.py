"""The PyTorch L-BFGS probe solver against scikit-learn's on the same features: same objective, same model.

Tolerance: class probabilities within 2e-3 (float32 L-BFGS against float64 lbfgs, both to their default
tolerances), and the probe's chosen C and test metrics equal on these fixtures.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from maskclip_bench.evaluators.linprobe import TORCH_SOLVER_MIN_ELEMENTS, choose_solver, evaluate_linear_probe
from maskclip_bench.evaluators.torch_logreg import TorchLogisticRegression, TorchStandardScaler


def blobs(n: int, classes: int, dim: int, seed: int, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, size=n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("classes, C", [(5, 1.0), (5, 0.01), (2, 1.0), (2, 0.05)])
def test_same_probabilities_as_sklearn(classes, C):
    X, y = blobs(400, classes, 12, seed=classes)
    X = StandardScaler().fit_transform(X)
    ours = TorchLogisticRegression(C=C, max_iter=500).fit(X, y).predict_proba(X)
    theirs = LogisticRegression(C=C, max_iter=2000, tol=1e-10).fit(X, y).predict_proba(X)
    assert np.abs(ours - theirs).max() < 2e-3


def test_labels_keep_their_values_and_warm_start_reuses_weights():
    X, y = blobs(200, 3, 6, seed=1)
    y = np.array([7, 11, 42])[y]  # non-contiguous class ids
    probe = TorchLogisticRegression(C=1.0, warm_start=True).fit(X, y)
    assert probe.classes_.tolist() == [7, 11, 42] and set(probe.predict(X)) <= {7, 11, 42}
    first = probe.weight.clone()
    probe.set_params(C=1.0, max_iter=1).fit(X, y)  # from the optimum one more iteration moves nothing
    assert np.allclose(probe.weight.numpy(), first.numpy(), atol=1e-4)


def test_scaler_matches_sklearn():
    X, _ = blobs(50, 2, 4, seed=3)
    X[:, 2] = 5.0  # a constant feature: scale 1, like scikit-learn
    ours = TorchStandardScaler().fit(X).transform(X).numpy()
    assert np.allclose(ours, StandardScaler().fit_transform(X), atol=1e-5)


def test_probe_metrics_agree_between_solvers():
    X, y = blobs(900, 6, 16, seed=5, spread=3.0)
    split = dict(train_feats=X[:500], train_labels=y[:500], val_feats=X[500:700], val_labels=y[500:700],
                 test_feats=X[700:], test_labels=y[700:])
    sk = evaluate_linear_probe(**split, solver="sklearn")
    th = evaluate_linear_probe(**split, solver="torch")
    assert sk["lp_C"] == th["lp_C"]
    for key in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall"):
        assert abs(sk[key] - th[key]) <= 1 / 200  # at most one of the 200 test samples decided differently


def test_auto_picks_by_size():
    assert choose_solver("auto", TORCH_SOLVER_MIN_ELEMENTS - 1) == "sklearn"
    assert choose_solver("auto", TORCH_SOLVER_MIN_ELEMENTS) == "torch"
    assert choose_solver("sklearn", 10**12) == "sklearn"
    with pytest.raises(ValueError, match="unknown linear-probe solver"):
        choose_solver("cuml", 1)


def test_linprobe_command_records_the_solver(tiny_checkpoint, tmp_path, eval_cli):
    import json

    results = tmp_path / "runs"
    code, _, err = eval_cli("linprobe", "--ckpt", tiny_checkpoint, "--dataset",
                            "shapes/shape_color:test=60,train=120,val=60", "--solver", "torch", "--results-dir",
                            results, "--no-cache", "--threads", 1)
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert record["eval_params"]["solver"] == "torch" and 0 <= record["metrics"]["lp_acc1"] <= 1
    code, _, err = eval_cli("linprobe", "--ckpt", tiny_checkpoint, "--dataset", "shapes/shape_color:test=60",
                            "--solver", "cuml", "--results-dir", results, "--no-cache")
    assert code != 0 and "--solver must be one of auto, sklearn, torch" in err
