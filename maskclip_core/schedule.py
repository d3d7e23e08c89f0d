"""Schedules as pure functions of the global step (so resume and multi-rank runs agree): the learning rate, and
when the phases of `distill_start` / `mlm_start` switch on."""
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


def start_step(start: float, total_steps: int) -> int:
    """The first step (0-based) of a phase that is on for the last `1 - start` of a `total_steps` run."""
    return int(math.ceil(start * total_steps - 1e-9))


def phase_on(start: float, step: int, total_steps: int) -> bool:
    """Whether a phase starting at fraction `start` of the run (distill_start, mlm_start) is on at `step`."""
    return step >= start_step(start, total_steps)
