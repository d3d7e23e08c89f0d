"""Numeric precision of the training step: what `auto` means on this machine, which autocast (if any) and which
attention kernel to use."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import PRECISIONS
from .errors import ConfigError

BF16 = ("bf16", "amp_bf16")
# What `auto` resolves to, overriding the device check (e.g. fp32 in a test suite that must compute the same numbers
# on every CPU). Unset in normal use.
AUTO_OVERRIDE_ENV = "MASKCLIP_AUTO_PRECISION"

# "auto" lets PyTorch pick the CPU attention kernel (its flash kernel): the "before" of results/perf.md.
CPU_ATTENTION_ENV = "MASKCLIP_CPU_ATTENTION"


def _cpu_flag(torch_check: str, cpuinfo_flag: str) -> bool:
    """A CPU feature as torch's cpuinfo reports it (`torch.cpu._is_*`), else from /proc/cpuinfo's flags."""
    check = getattr(torch.cpu, torch_check, None)
    if check is not None:
        return bool(check())
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and cpuinfo_flag in line.split() for line in f)
    except OSError:
        return False


def native_cpu_bf16() -> tuple[bool, str]:
    """(whether this CPU runs bf16 matmuls natively, the evidence as words).

    Decided from the CPU features PyTorch itself detects (cpuinfo: AMX tiles or AVX-512 BF16), not from a timed
    probe: the answer is free, deterministic and the same in every process of a run, where a probe costs a second
    and can flip under load. Without either feature oneDNN emulates bf16 and a matmul runs ~100x slower than fp32
    (0.9 vs 87 GFLOP/s measured on an AVX2-only AMD EPYC).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    amx = _cpu_flag("_is_amx_tile_supported", "amx_bf16")
    avx512_bf16 = _cpu_flag("_is_avx512_bf16_supported", "avx512_bf16")
    features = [name for name, ok in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if ok]
    if features:
        return True, f"CPU {capability} with {' and '.join(features)}"
    return False, f"CPU {capability} without AMX or AVX512-BF16"


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved `run.precision`: the value to run with, why, and a warning line when it will be slow."""

    precision: str
    reason: str
    warning: str | None = None

    def describe(self, requested: str) -> str:
        """One line for the user, e.g. `precision: fp32 (auto: CPU AVX2 without AMX or AVX512-BF16)`."""
        how = f"auto: {self.reason}" if requested == "auto" else self.reason
        return f"precision: {self.precision} ({how})"


def resolve_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """What `requested` means on `device`. `auto`: on CUDA bf16 autocast where the GPU supports it, else fp16 with
    a GradScaler; on CPU bf16 autocast only where the CPU runs bf16 natively, else fp32. An explicit value is kept
    (bf16 on a CPU without native bf16 runs, with a warning)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{requested}'")
    override = os.environ.get(AUTO_OVERRIDE_ENV)
    if requested == "auto" and override:
        if override not in PRECISIONS or override == "auto":
            raise ConfigError(f"{AUTO_OVERRIDE_ENV} must be one of fp32, bf16, amp_bf16, amp; got '{override}'")
        return PrecisionChoice(override, f"{AUTO_OVERRIDE_ENV}={override}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return PrecisionChoice("bf16", "GPU supports bf16") if bf16_ok else \
                PrecisionChoice("amp", "GPU without bf16: fp16 autocast + GradScaler")
        if requested in BF16 and not bf16_ok:
            raise ConfigError(f"precision {requested} asked for, but this GPU does not support bf16; use amp or auto")
        return PrecisionChoice(requested, "asked for")
    if device.type != "cpu":
        if requested == "auto":
            return PrecisionChoice("fp32", f"{device.type} device")
        return PrecisionChoice(requested, "asked for")
    native, evidence = native_cpu_bf16()
    if requested == "auto":
        return PrecisionChoice("bf16" if native else "fp32", evidence)
    if requested in BF16 and not native:
        return PrecisionChoice(requested, "asked for", warning=(
            f"warning: {requested} on a {evidence}: bf16 is emulated there, a training step runs about 14x slower "
            f"than in fp32 (a matmul ~100x); use --precision auto or fp32"))
    return PrecisionChoice(requested, "asked for")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved `run.precision` (None: fp32, no autocast). `bf16` is `amp_bf16`: weights, optimizer
    state, EMA teacher and loss reductions stay float32 (autocast runs matmuls in bf16, losses in fp32)."""
    if precision == "auto":
        raise ValueError("resolve 'auto' with resolve_precision() first")
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


@contextlib.contextmanager
def exact_fp32(device: str | torch.device) -> Iterator[None]:
    """No TF32 in CUDA matmuls and convolutions for the block (CLIP_benchmark's fp32 with ``--no_amp``), the
    switches restored after it, also on failure; on other devices nothing changes."""
    if not str(device).startswith("cuda"):
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
