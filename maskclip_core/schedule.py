"""Learning-rate schedule as a pure function of the global step (so resume and multi-rank runs agree)."""
from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from base_lr/warmup to base_lr over `warmup` steps, then cosine decay to `min_lr`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - min_lr)
