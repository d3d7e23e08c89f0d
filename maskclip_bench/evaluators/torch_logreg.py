"""Multinomial logistic regression solved full-batch with PyTorch's L-BFGS, on the CPU or a GPU.

For feature sets of ImageNet size (1.28M x 768) scikit-learn's lbfgs is slow and copies the data to float64; this
solver keeps the features as one float32 tensor on the evaluation device. It minimises scikit-learn's objective
for ``LogisticRegression(C=C)`` with more than two classes, divided by C times the sample count (same minimiser):

    mean_i cross_entropy(x_i W + b, y_i) + ||W||^2 / (2 C n)        (the intercept b is not penalised)

Two classes: scikit-learn fits one weight vector w (sigmoid) where this fits a softmax over two, W = (w1, w2);
the minimiser has w1 = -w2 and w = w1 - w2, whose penalty ||w1||^2 + ||w2||^2 = ||w||^2 / 2 is half of
scikit-learn's, so C is halved here for two classes to fit the same model.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class TorchLogisticRegression:
    """The part of scikit-learn's LogisticRegression interface the probe uses: fit, predict_proba, classes_."""

    def __init__(self, C: float = 1.0, max_iter: int = 300, tol: float = 1e-6, device: str = "cpu",
                 warm_start: bool = False) -> None:
        self.C, self.max_iter, self.tol, self.device, self.warm_start = C, max_iter, tol, device, warm_start
        self.weight: torch.Tensor | None = None  # [D, K]
        self.bias: torch.Tensor | None = None  # [K]
        self.classes_: np.ndarray | None = None

    def set_params(self, **params: Any) -> "TorchLogisticRegression":
        """Change settings (C, max_iter, ...) and keep the fitted weights (a warm start for the next fit)."""
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def _tensor(self, X: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X, dtype=torch.float32,
                               device=self.device)

    def fit(self, X: Any, y: Any) -> "TorchLogisticRegression":
        """Fit on features X [N, D] and integer labels y [N] (arrays or tensors)."""
        labels = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y)
        classes, targets = np.unique(labels, return_inverse=True)
        x = self._tensor(X)
        t = torch.as_tensor(targets, device=self.device)
        n, d, k = x.shape[0], x.shape[1], len(classes)
        fresh = not (self.warm_start and self.weight is not None and self.weight.shape == (d, k)
                     and self.classes_ is not None and np.array_equal(self.classes_, classes))
        if fresh:
            self.weight = torch.zeros(d, k, device=self.device)
            self.bias = torch.zeros(k, device=self.device)
        weight = self.weight.clone().requires_grad_(True)
        bias = self.bias.clone().requires_grad_(True)
        c = self.C / 2 if k == 2 else self.C  # see the module docstring
        penalty = 1.0 / (2.0 * c * n)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, t) + penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias, self.classes_ = weight.detach(), bias.detach(), classes
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [N, K], columns in the order of `classes_`."""
        if self.weight is None:
            raise RuntimeError("fit the probe first")
        with torch.no_grad():
            return torch.softmax(self._tensor(X) @ self.weight + self.bias, dim=1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class TorchStandardScaler:
    """scikit-learn's StandardScaler on torch tensors: per-feature mean and population std (1 where it is 0)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.mean: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def fit(self, X: Any) -> "TorchStandardScaler":
        """Learn the mean and scale of X [N, D]."""
        x = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X, dtype=torch.float32, device=self.device)
        self.mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        self.scale = torch.where(std == 0, torch.ones_like(std), std)
        return self

    def transform(self, X: Any) -> torch.Tensor:
        """(X - mean) / scale, as a float32 tensor on the scaler's device."""
        x = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X, dtype=torch.float32, device=self.device)
        return (x - self.mean) / self.scale
