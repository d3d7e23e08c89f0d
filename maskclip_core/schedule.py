"""Learning-rate schedule as a pure function of the global step (so resume and multi-rank runs agree)."""
from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0,
              warmup_start_lr: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `base_lr` to `min_lr` over the remaining steps.

    The warm-up is the line from `warmup_start_lr` at step -1 to `base_lr` at step `warmup - 1`, so with the default
    start 0 step 0 trains at `base_lr / warmup` (open_clip's `assign_learning_rate(base_lr * (step + 1) / warmup)`).
    """
    if step < warmup:
        return warmup_start_lr + (base_lr - warmup_start_lr) * (step + 1) / warmup
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - min_lr)
