"""Dense (semantic segmentation) linear probe on frozen patch tokens.

A per-patch linear classifier is trained with cross-entropy on standardised patch tokens; its logits
on the patch grid are upsampled bilinearly to the mask resolution, both for the loss and for
prediction. Scored with the usual confusion-matrix metrics: mIoU over the classes present (in the
ground truth or the predictions, i.e. with a non-empty union) and pixel accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _grid_hw(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    return (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))


def _dense_logits(head: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Head on [B, h*w, D] tokens -> logits [B, C, H, W] upsampled bilinearly from the patch grid."""
    logits = head(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[num_classes, num_classes] counts, rows ground truth, columns prediction; ignored pixels are dropped."""
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """`miou` (mean IoU over classes whose union is non-empty) and `pixel_acc` from a confusion matrix."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    miou = (hits[present] / union[present]).mean().item() if present.any() else float("nan")
    total = confusion.sum().item()
    return {"miou": miou, "pixel_acc": hits.sum().item() / total if total else float("nan")}


def evaluate_dense_probe(
    train_tokens: torch.Tensor,
    train_segs: torch.Tensor,
    test_tokens: torch.Tensor,
    test_segs: torch.Tensor,
    num_classes: int,
    grid_size: int | tuple[int, int],
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    seed: int = 0,
    ignore_index: int = 255,
) -> dict[str, float]:
    """Train a linear probe on patch tokens [N, h*w, D] against masks [N, H, W]; returns test `miou`, `pixel_acc`.

    `grid_size` is h (square grid) or (h, w). Pixels equal to `ignore_index` count neither in the loss
    nor in the metrics. Trained with AdamW on the CPU; `seed` fixes init and shuffling without touching
    the global RNG state.
    """
    grid = _grid_hw(grid_size)
    train_tokens, test_tokens = train_tokens.float(), test_tokens.float()
    train_segs, test_segs = train_segs.long(), test_segs.long()
    if train_tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{train_tokens.shape[1]} tokens per image do not fit a {grid[0]}x{grid[1]} grid")
    # Standardising with train statistics makes one learning rate work across towers.
    mean = train_tokens.mean(dim=(0, 1))
    std = train_tokens.std(dim=(0, 1)).clamp_min(1e-6)
    train_tokens, test_tokens = (train_tokens - mean) / std, (test_tokens - mean) / std

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(train_tokens.shape[-1], num_classes)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        n = len(train_tokens)
        for _ in range(epochs):
            for idx in torch.randperm(n).split(batch_size):
                segs = train_segs[idx]
                if not (segs != ignore_index).any():
                    continue  # cross-entropy over zero pixels is NaN
                logits = _dense_logits(head, train_tokens[idx], grid, segs.shape[-2:])
                loss = F.cross_entropy(logits, segs, ignore_index=ignore_index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for idx in torch.arange(len(test_tokens)).split(batch_size):
            segs = test_segs[idx]
            pred = _dense_logits(head, test_tokens[idx], grid, segs.shape[-2:]).argmax(dim=1)
            confusion += confusion_matrix(pred, segs, num_classes, ignore_index)
    return segmentation_metrics(confusion)
