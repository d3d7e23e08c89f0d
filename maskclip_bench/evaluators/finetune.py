"""End-to-end fine-tuning of the image tower with a linear classification head (MAE/BEiT-style recipe).

A deep copy of `model.visual` gets a linear head on its pooled pre-projection features and is trained
with AdamW, layer-wise learning-rate decay (the head and final norm at the full rate, each ViT block
below `layer_decay` times the one above it, the patch/position embeddings lowest) and a per-step
linear warm-up + cosine schedule. The caller's model is never modified.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from clip_benchmark.metrics.zeroshot_classification import accuracy
from torch import nn

from .features import split_batch, visual_forward

_EMBEDDING_PARAMS = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")
_BLOCK_INDEX = re.compile(r"^transformer\.resblocks\.(\d+)\.")


# MAE's fine-tuning head init, for pretrained towers. From an untrained tower (`--ckpt scratch:MODEL`) it stalls
# training: MaskCLIP-Tiny-8 on clean one-object shapes, 600 steps, reached 10.8 % (chance 10 %) with 2e-5, 34.8 %
# with 0.02 and 80.1 % with 0.05, about nn.Linear's own scale (results/shapes_calibration.md).
HEAD_INIT_STD = 2e-5


class VisualClassifier(nn.Module):
    """An open_clip VisionTransformer with a linear head on its pooled features (before `proj`)."""

    def __init__(self, visual: nn.Module, num_classes: int, head_init_std: float = HEAD_INIT_STD) -> None:
        super().__init__()
        self.visual = visual
        width = visual.ln_post.normalized_shape[0]
        self.head = nn.Linear(width, num_classes)
        # MAE's near-zero head starts from uniform predictions, so early gradients don't wreck a pretrained
        # backbone; it also starves an untrained one of gradient (see HEAD_INIT_STD).
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, pooled, _ = visual_forward(self.visual, images)
        return self.head(pooled)


def layer_id(param_name: str, num_blocks: int) -> int:
    """Depth of a VisionTransformer parameter: 0 embeddings, i+1 block i, num_blocks+1 everything above."""
    if param_name.startswith(_EMBEDDING_PARAMS):
        return 0
    match = _BLOCK_INDEX.match(param_name)
    return int(match.group(1)) + 1 if match else num_blocks + 1


def layer_decay_param_groups(
    classifier: VisualClassifier, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW param groups with an "lr_scale" of layer_decay ** (top - depth); biases, norms, embeddings get no decay."""
    visual = classifier.visual
    num_blocks = len(visual.transformer.resblocks)
    no_decay = set(visual.no_weight_decay()) if hasattr(visual, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    # (name inside the tower or None for the head, parameter)
    named = list(visual.named_parameters()) + [(None, p) for p in classifier.head.parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        depth = num_blocks + 1 if name is None else layer_id(name, num_blocks)
        decay = param.ndim >= 2 and name not in no_decay
        group = groups.setdefault(
            (depth, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_blocks + 1 - depth),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def lr_multiplier(step: int, total_steps: int, warmup_steps: int) -> float:
    """Schedule factor at `step` (0-based): linear warm-up to 1 over `warmup_steps`, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def _predict(classifier: nn.Module, loader: Iterable[Any], device: str | torch.device, label_key: str | None):
    classifier.eval()
    logits, targets = [], []
    for batch in loader:
        images, labels = split_batch(batch, label_key)
        logits.append(classifier(images.to(device)).float().cpu())
        targets.append(torch.as_tensor(labels).cpu())
    return torch.cat(logits), torch.cat(targets)


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    num_classes: int,
    *,
    epochs: int = 2,
    lr: float = 1e-3,
    layer_decay: float = 0.65,
    weight_decay: float = 0.05,
    warmup_steps: int | None = None,
    device: str | torch.device = "cpu",
    label_key: str | None = None,
    seed: int = 0,
    head_init_std: float = HEAD_INIT_STD,
) -> dict[str, float]:
    """Fine-tune a copy of `model.visual` plus a linear head; returns test `ft_acc1`, `ft_acc5` (top-min(5, classes)).

    Also returns `ft_loss_first_epoch` and `ft_loss_last_epoch`, the mean training loss of the first and
    last epoch. `warmup_steps` defaults to a tenth of all steps. `seed` fixes the head init and any
    dropout/shuffling without touching the global RNG state. `head_init_std`: the head's initial weight scale
    (MAE's 2e-5 suits pretrained towers; an untrained one needs about 0.05, see HEAD_INIT_STD).
    """
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total_steps = epochs * steps_per_epoch
    if warmup_steps is None:
        warmup_steps = total_steps // 10
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = copy.deepcopy(model.visual)
        if getattr(visual, "proj", None) is not None:
            visual.proj.requires_grad_(False)  # the head replaces the projection
        classifier = VisualClassifier(visual, num_classes, head_init_std).to(device)
        groups = layer_decay_param_groups(classifier, weight_decay, layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=lr)

        step, epoch_losses = 0, []
        for _ in range(epochs):
            classifier.train()
            total, count = 0.0, 0
            for batch in train_loader:
                images, labels = split_batch(batch, label_key)
                factor = lr_multiplier(step, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"] * factor
                loss = F.cross_entropy(classifier(images.to(device)), torch.as_tensor(labels).to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(images)
                count += len(images)
                step += 1
            epoch_losses.append(total / max(count, 1))

        logits, targets = _predict(classifier, test_loader, device, label_key)
    acc1, acc5 = accuracy(logits, targets, topk=(1, min(5, num_classes)))
    return {
        "ft_acc1": acc1,
        "ft_acc5": acc5,
        "ft_loss_first_epoch": epoch_losses[0] if epoch_losses else float("nan"),
        "ft_loss_last_epoch": epoch_losses[-1] if epoch_losses else float("nan"),
    }
