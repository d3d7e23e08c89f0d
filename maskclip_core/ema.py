"""The EMA ("mean") teacher: a copy of the student's image tower (and prototype head) that never gets gradients.

It is kept outside the student module on purpose: the optimizer, DDP and `clip` exports never see it. Its momentum
follows a cosine schedule indexed by the global step (so resume is exact), and it is updated after each optimizer
step in float32.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import encode_image_tokens


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
            logits = self.proto_head(tokens).float()
            self._last_logits_mean = logits.mean(dim=(0, 1), keepdim=False).unsqueeze(0)
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
        if self.proto_head is not None and hasattr(self, "_last_logits_mean"):
            batch_center = self._last_logits_mean
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(batch_center)
                batch_center = batch_center / torch.distributed.get_world_size()
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
            del self._last_logits_mean
