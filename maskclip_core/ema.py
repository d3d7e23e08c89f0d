"""The EMA ("mean") teacher: a copy of the student's image tower (and prototype head) that never gets gradients.

It is kept outside the student module on purpose: the optimizer, DDP and `clip` exports never see it. Its momentum
follows a cosine schedule indexed by the global step (so resume is exact), and it is updated after each optimizer
step in float32.

How far the teacher moves from its random initialisation over a run is set by the sum of (1 - m) over the steps
(its initial weights keep a share of about exp(-sum)). With the cosine from m0 to 1 that sum is (1 - m0) * T / 2:
m0 = 0.996 leaves 55% of the random start in a 300-step run, which is why the default m0 depends on T.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector

from .encoders import encode_image_tokens


# 1 - m0 = C / sqrt(T), with C chosen so that m0 = 0.996 at T = 100k steps (the paper-scale run, method.md step 7).
_HORIZON_C = 0.004 * math.sqrt(100_000)


def default_momentum(total_steps: int) -> float:
    """The run-length-aware starting momentum: 1 - 0.004 * sqrt(100k / T), clipped to [0.5, 0.9999].

    Why a square root rather than a fixed fraction of the run: the averaging horizon 1 / (1 - m0) then grows as
    sqrt(T) (13 steps at T = 300, 250 at T = 100k) while the share of the random start left at the end,
    exp(-(1 - m0) T / 2) = exp(-0.63 sqrt(T)), is 1e-3 at T = 120 and 2e-5 at T = 300. A horizon that is a fixed
    fraction of the run that gives 0.996 at 100k would be under one step (m0 = 0, no averaging at all) in every run
    shorter than 400 steps.
    """
    if total_steps < 1:
        raise ValueError("total_steps must be >= 1")
    return min(max(1.0 - _HORIZON_C / math.sqrt(total_steps), 0.5), 0.9999)


def momentum_at(step: int, total_steps: int, base: float, end: float) -> float:
    """Cosine schedule from `base` at step 0 to `end` at `total_steps` (BYOL/DINO)."""
    if total_steps <= 1:
        return end
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2


class Teacher(nn.Module):
    """EMA copy of `student.clip.visual` (+ `student.proto_head` for the `soft` target). Always eval, no grad."""

    def __init__(self, student: nn.Module, target: str, teacher_temp: float = 0.04, center_momentum: float = 0.9):
        super().__init__()
        self.visual = copy.deepcopy(student.clip.visual)
        head = getattr(student, "proto_head", None)
        self.proto_head = copy.deepcopy(head) if head is not None else None
        self.target = target
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        if self.proto_head is not None:
            self.register_buffer("center", torch.zeros(1, head.last.out_features))
        # Prototype-logit means of the micro-batches seen since the last update (the centre's batch statistic).
        self._logit_means: list[torch.Tensor] = []
        # The random start, kept outside the state dict (a resumed run rebuilds the same start from its seed):
        # the trainer logs how far the teacher has moved from it.
        self.register_buffer("init_weights", parameters_to_vector(self.visual.parameters()).detach().clone(),
                             persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        # The teacher stays in eval mode whatever its parent does.
        return super().train(False)

    def _pairs(self, student: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.visual, student.clip.visual)]
        if self.proto_head is not None:
            pairs.append((self.proto_head, student.proto_head))
        return pairs

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch targets [B, N, D] on the FULL image: LayerNorm-ed tokens (`feature`) or centred, sharpened
        prototype probabilities (`soft`)."""
        _, _, tokens = encode_image_tokens(self.visual, images)
        tokens = tokens.float()
        if self.target == "soft":
            # fp32 outside autocast: the logits are divided by a temperature of 0.04, which would magnify bf16's
            # rounding (8 bits of mantissa) 25-fold before the softmax.
            with torch.autocast(tokens.device.type, enabled=False):
                logits = self.proto_head(tokens)
            self._logit_means.append(logits.mean(dim=(0, 1)).unsqueeze(0))
            return F.softmax((logits - self.center) / self.teacher_temp, dim=-1)
        return F.layer_norm(tokens, tokens.shape[-1:])

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """teacher = m * teacher + (1 - m) * student, parameter-wise in float32; buffers are copied."""
        for t_mod, s_mod in self._pairs(student):
            for t, s in zip(t_mod.parameters(), s_mod.parameters()):
                t.mul_(momentum).add_(s.detach().float(), alpha=1.0 - momentum)
            for t, s in zip(t_mod.buffers(), s_mod.buffers()):
                t.copy_(s)
        if self.proto_head is not None and self._logit_means:
            # Every micro-batch of the step (equal sizes), then every rank: the mean over the whole global batch.
            batch_center = torch.stack(self._logit_means).mean(dim=0)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(batch_center)
                batch_center = batch_center / torch.distributed.get_world_size()
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
        self._logit_means = []

    @torch.no_grad()
    def restart_from(self, student: nn.Module) -> None:
        """Set the teacher to the student's current weights (distill_start: the teacher switches on mid-run)."""
        for t_mod, s_mod in self._pairs(student):
            for t, s in zip(t_mod.parameters(), s_mod.parameters()):
                t.copy_(s.detach())
            for t, s in zip(t_mod.buffers(), s_mod.buffers()):
                t.copy_(s)
        self._logit_means = []

    def discard_pending(self) -> None:
        """Forget the centre statistics of a step that was skipped (nothing of it may move the teacher)."""
        self._logit_means = []

    @torch.no_grad()
    def distances(self, student: nn.Module) -> dict[str, float]:
        """Relative L2 distances of the teacher's image tower from its random start and from the student's:
        `teacher_from_init` = |T - T0| / |T0|, `teacher_from_student` = |T - S| / |S| (over all parameters)."""
        teacher = parameters_to_vector(self.visual.parameters()).float()
        current = parameters_to_vector(student.clip.visual.parameters()).detach().float()
        init = self.init_weights.float()

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12))

        return {"teacher_from_init": rel(teacher, init), "teacher_from_student": rel(teacher, current)}
