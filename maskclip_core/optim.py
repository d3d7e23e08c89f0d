"""AdamW with open_clip's parameter groups: no weight decay on norms, biases, logit scale, and other 0/1-d
parameters (CLS token, mask tokens, mask embedding); decay on every matrix."""
from __future__ import annotations

import torch
from torch import nn

from .config import OptimConfig


def no_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip's exclusion rule, extended to MaskCLIP's learned mask token / embedding."""
    return (
        param.ndim < 2
        or "bn" in name
        or "ln" in name
        or "bias" in name
        or "logit_scale" in name
        or "mask_token" in name
        or "mask_embedding" in name
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, split into decay / no-decay groups; `fused` (`run.fused_optimizer`):
    torch's fused implementation, the same update in one kernel (equal to the default up to rounding)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not no_decay(n, p)]
    rest = [p for n, p in named if no_decay(n, p)]
    return torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.weight_decay}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True if fused else None,
    )
