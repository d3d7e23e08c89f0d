"""Numeric precision of the training step: which autocast (if any) and which attention kernel to use."""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# "auto" lets PyTorch pick the CPU attention kernel (its flash kernel): the "before" of results/perf.md.
CPU_ATTENTION_ENV = "MASKCLIP_CPU_ATTENTION"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a `run.precision` (None: fp32, no autocast). `bf16` is `amp_bf16`: weights, optimizer
    state, EMA teacher and loss reductions stay float32 (autocast runs matmuls in bf16, losses in fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "amp_bf16": torch.bfloat16, "amp": torch.float16}[precision]


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type) if precision == "amp" else None


def compute_context(device: torch.device, precision: str) -> ContextManager:
    """The context for a forward pass: autocast when asked; on CPU, plain-math attention.

    Why math attention on CPU: the tiny models' sequences are short (33-65 tokens) and PyTorch's CPU flash
    kernel spends more time in its backward than all matmuls of the tower together; the math path (two
    batched matmuls and a softmax, differentiated by autograd) made a bf16 training step 1.2x faster
    (measured in results/perf.md). On CUDA the fused kernels win, so they stay.
    """
    stack = contextlib.ExitStack()
    dtype = autocast_dtype(precision)
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    stack.enter_context(attention_context(device))
    return stack


def attention_context(device: torch.device) -> ContextManager:
    """The attention kernel choice alone: also needed around the backward pass, where gradient checkpointing
    recomputes the forward and must take the same kernel as the forward did."""
    if device.type != "cpu" or os.environ.get(CPU_ATTENTION_ENV, "math") == "auto":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
