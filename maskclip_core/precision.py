"""Numeric precision of the training step: which autocast (if any) and which attention kernel to use."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def compute_context(device: torch.device, precision: str) -> ContextManager:
    """The context for a forward pass: bf16 autocast when asked; on CPU, plain-math attention.

    Why math attention on CPU: the tiny models' sequences are short (33-65 tokens) and PyTorch's CPU flash
    kernel spends more time in its backward than all matmuls of the tower together; the math path (two
    batched matmuls and a softmax, differentiated by autograd) made a bf16 training step 1.2x faster
    (measured in results/train_step.md). On CUDA the fused kernels win, so they stay.
    """
    stack = contextlib.ExitStack()
    if precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cpu":
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack
