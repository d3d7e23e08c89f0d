"""Linear probe on frozen features: scikit-learn on the CPU, or PyTorch's L-BFGS for large feature sets.

CLIP's protocol: an L2-regularised logistic regression (lbfgs) on standardised features, its inverse
regularisation strength C picked on a validation split from a log-spaced grid, then refitted on
train+val and scored once on test. (CLIP_benchmark's own probe trains with torch on CUDA.)

Two solvers fit the same objective: scikit-learn's (exact, float64, CPU) and `torch_logreg` (full-batch L-BFGS
on float32 tensors, CPU or GPU), which `solver="auto"` picks from `TORCH_SOLVER_MIN_ELEMENTS` features on.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))
# From this many train+val feature values on (e.g. 65,000 x 768), `auto` uses the torch solver: there
# scikit-learn's float64 copies and single-threaded lbfgs start to cost minutes and gigabytes.
TORCH_SOLVER_MIN_ELEMENTS = 50_000_000
SOLVERS = ("auto", "sklearn", "torch")


def _to_numpy(x: Any) -> np.ndarray:
    # Accepts torch tensors (CPU) and array-likes alike.
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# Weakly regularised fits on features of barely trained models can hit max_iter; the grid search still picks C
# by validation accuracy, so the warning only adds noise to the output.
warnings.filterwarnings("ignore", category=ConvergenceWarning, module="sklearn")


def topk_accuracy(proba: np.ndarray, classes: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of `labels` found among the k most probable `classes` (columns of `proba`)."""
    k = min(k, proba.shape[1])
    topk = classes[np.argsort(-proba, axis=1, kind="stable")[:, :k]]
    return float((topk == labels[:, None]).any(axis=1).mean())


def select_C(grid: Sequence[float], val_acc: Sequence[float]) -> float:
    """The C of `grid` with the best validation accuracy `val_acc` (same order); on ties the smallest such C,
    i.e. the strongest regularisation that does as well."""
    if len(grid) != len(val_acc) or not grid:
        raise ValueError(f"need one validation accuracy per C, got {len(val_acc)} for {len(grid)}")
    best = max(val_acc)
    return min(C for C, acc in zip(grid, val_acc) if acc == best)


def evaluate_linear_probe(
    train_feats: Any,
    train_labels: Any,
    val_feats: Any,
    val_labels: Any,
    test_feats: Any,
    test_labels: Any,
    *,
    C_grid: Sequence[float] | None = None,
    seed: int = 0,
    max_iter: int = 300,
    solver: str = "auto",
    device: str = "cpu",
) -> dict[str, float]:
    """Logistic-regression probe: `lp_acc1`, `lp_acc5` (top-min(5, n_classes)), `lp_mean_per_class_recall`, `lp_C`.

    Features are [N, D] and labels [N] integer classes (tensors or arrays). C is the grid value with the
    best validation top-1 (the smallest such C on ties); the final probe is refitted on train+val. `solver`:
    "sklearn", "torch" (on `device`) or "auto" (by size, see `choose_solver`).
    """
    X_tr, y_tr = _to_numpy(train_feats), _to_numpy(train_labels)
    X_val, y_val = _to_numpy(val_feats), _to_numpy(val_labels)
    X_te, y_te = _to_numpy(test_feats), _to_numpy(test_labels)
    grid = sorted(C_grid) if C_grid is not None else list(DEFAULT_C_GRID)
    chosen = choose_solver(solver, (X_tr.shape[0] + X_val.shape[0]) * X_tr.shape[1])
    if chosen == "torch":
        from maskclip_bench.evaluators.torch_logreg import TorchLogisticRegression, TorchStandardScaler

        def model(**params: Any) -> Any:
            return TorchLogisticRegression(max_iter=max_iter, device=device, **params)

        def scaler() -> Any:
            return TorchStandardScaler(device)
    else:
        def model(**params: Any) -> Any:
            return LogisticRegression(max_iter=max_iter, random_state=seed, **params)

        scaler = StandardScaler

    # The C sweep runs from strong to weak regularisation, each fit warm-started from the previous solution:
    # same optimum, far fewer lbfgs iterations than cold starts for the weakly regularised end of the grid.
    sweep_scaler = scaler().fit(X_tr)
    X_tr_s, X_val_s = sweep_scaler.transform(X_tr), sweep_scaler.transform(X_val)
    sweep = model(warm_start=True)
    val_acc = [float((sweep.set_params(C=C).fit(X_tr_s, y_tr).predict(X_val_s) == y_val).mean()) for C in grid]
    best_C = select_C(grid, val_acc)

    X_all, y_all = np.concatenate([X_tr, X_val]), np.concatenate([y_tr, y_val])
    final_scaler = scaler().fit(X_all)
    probe = model(C=best_C).fit(final_scaler.transform(X_all), y_all)
    proba = probe.predict_proba(final_scaler.transform(X_te))
    classes = probe.classes_
    pred = classes[proba.argmax(axis=1)]
    return {
        "lp_acc1": float((pred == y_te).mean()),
        "lp_acc5": topk_accuracy(proba, classes, y_te, 5),
        "lp_mean_per_class_recall": float(balanced_accuracy_score(y_te, pred)),
        "lp_C": float(best_C),
    }


def choose_solver(solver: str, elements: int) -> str:
    """"sklearn" or "torch": `solver` itself, or for "auto" torch from TORCH_SOLVER_MIN_ELEMENTS feature values on."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown linear-probe solver '{solver}' (choose {', '.join(SOLVERS)})")
    if solver == "auto":
        return "torch" if elements >= TORCH_SOLVER_MIN_ELEMENTS else "sklearn"
    return solver
