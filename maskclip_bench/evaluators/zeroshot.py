"""Zero-shot classification, computed exactly as CLIP_benchmark computes it.

The class prompts' embeddings, the top-k accuracy and the mean per-class recall come from
`clip_benchmark.metrics.zeroshot_classification`; only the image encoding is ours (features.py), so a
cached feature dict can be scored without re-encoding.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from clip_benchmark.metrics.zeroshot_classification import (
    accuracy,
    average_precision_per_class,
    zero_shot_classifier,
)
from sklearn.metrics import balanced_accuracy_score, f1_score

from .features import EndTokenText, encode_images
from .templates import normalize_templates


def worst_group_accuracy(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, k: int = 1) -> float:
    """The lowest top-`k` accuracy over the groups that have samples (`groups`: [N] integer group ids).

    WILDS' worst-group metric (``Metric.compute_group_wise`` then ``worst`` over groups with a count), which
    DataComp scores FMoW (worst region, top-1), Dollar Street (worst income group, top-5) and GeoDE (worst
    region, top-1) by.
    """
    hit = (logits.topk(min(k, logits.shape[1]), dim=1).indices == targets[:, None]).any(dim=1).double()
    return min(hit[groups == g].mean().item() for g in groups.unique())


def zeroshot_metrics(logits: torch.Tensor, targets: torch.Tensor, n_classes: int,
                     groups: torch.Tensor | None = None) -> dict[str, float]:
    """CLIP_benchmark's metrics from logits [N, C] and targets ([N] labels, or [N, C] multi-label 0/1).

    Single-label: `acc1`, `acc5` (top-min(5, n_classes), where CLIP_benchmark gives NaN below 5 classes),
    `mean_per_class_recall` (sklearn's balanced accuracy) and `f1_macro`, the macro F1 over the classes present
    in `targets` (WILDS' ``F1(average="macro")``, DataComp's iWildCam metric ``F1-macro_all``: a class that is
    predicted but never true adds no term). With `groups` ([N] group ids, e.g. a region per image), also
    `acc1_worst_group` and `acc5_worst_group` (`worst_group_accuracy`). Multi-label: `mean_average_precision`.
    """
    if targets.ndim == 2:
        return {"mean_average_precision": average_precision_per_class(logits, targets).mean().item()}
    acc1, acc5 = accuracy(logits, targets, topk=(1, min(5, n_classes)))
    true, pred = targets.numpy(), logits.argmax(dim=1).numpy()
    recall = balanced_accuracy_score(true, pred)
    f1 = f1_score(true, pred, average="macro", labels=np.unique(true))
    metrics = {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(recall), "f1_macro": float(f1)}
    if groups is not None:
        if groups.shape != targets.shape:
            raise ValueError(f"{groups.shape[0]} group ids for {targets.shape[0]} samples")
        for k in (1, 5):
            metrics[f"acc{k}_worst_group"] = worst_group_accuracy(logits, targets, groups, k)
    return metrics


def evaluate_zeroshot(
    model: torch.nn.Module,
    dataloader: Iterable[Any] | None,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str] | Mapping[str, Sequence[str]],
    device: str | torch.device = "cpu",
    features: Mapping[str, Any] | None = None,
    groups: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zero-shot classification metrics `acc1`, `acc5`, `mean_per_class_recall`, `f1_macro` (see
    `zeroshot_metrics`).

    `templates` are `{c}` or `{}` format strings, or CLIP_benchmark's per-class dict of prompts (CuPL).
    `features` is `encode_images` output ("image_features" and "targets"); when given, `dataloader`
    is not read. `groups` ([N] group ids in the dataloader's order) adds the worst-group accuracies. Runs in fp32
    (amp=False) with `model.eval()`.
    """
    model.eval()
    model.to(device)
    if isinstance(templates, Mapping):
        prompts: list[str] | dict[str, list[str]] = {k: list(v) for k, v in templates.items()}
    else:
        prompts = normalize_templates(templates)
    # zero_shot_classifier hands the device to torch.autocast too, which wants a string.
    classifier = zero_shot_classifier(EndTokenText(model), tokenizer, list(classnames), prompts, str(device),
                                      amp=False)
    if features is None:
        if dataloader is None:
            raise ValueError("evaluate_zeroshot needs a dataloader or precomputed features")
        features = encode_images(model, dataloader, device)
    logits = 100.0 * features["image_features"] @ classifier.float().cpu()
    return zeroshot_metrics(logits, features["targets"], len(classnames), groups)
