"""Evaluation while training: when it runs, and how it is kept from disturbing the run.

The core does not know how to evaluate (that is `maskclip_bench`'s job): the trainer is handed an `EvalHook`,
a function of (step, student) returning named metrics, and calls it every `run.eval_every` steps, at step 0 of a
fresh run and at the last step. The guarantee it owes the run is that an evaluation changes nothing the run
depends on: every global random stream, the grad mode, the student's train/eval flags and the process-wide
numeric settings are restored afterwards, so a run with evaluations ends with the same weights, bit for bit, as
one without, and resumes exactly from any checkpoint.
"""
from __future__ import annotations

import contextlib
import random
import time
from typing import Callable, Iterator

import numpy as np
import torch

# (step, student model) -> {metric name: value}. The student is the plain module (not DDP-wrapped).
EvalHook = Callable[[int, torch.nn.Module], dict[str, float]]


def eval_due(step: int, total: int, every: int, *, fresh_start: bool = False) -> bool:
    """Whether to evaluate after `step` steps: every `every` steps, at the end, and at step 0 of a fresh run."""
    if every <= 0:
        return False
    if step == 0:
        return fresh_start
    return step % every == 0 or step == total


@contextlib.contextmanager
def isolated_global_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore, on exit, what an evaluation may change and training reads: the torch (CPU and CUDA), Python and
    NumPy random streams, the grad mode, every module's train flag, torch's thread count and TF32 switches."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    python_state, numpy_state = random.getstate(), np.random.get_state()
    modes = [(module, module.training) for module in model.modules()]
    threads = torch.get_num_threads()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for module, training in modes:
            module.training = training
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.set_grad_enabled(grad_enabled)


def run_eval(hook: EvalHook, step: int, model: torch.nn.Module) -> tuple[dict[str, float], float]:
    """Call `hook` on the student in eval mode without gradients, isolated; the metrics and the seconds taken."""
    start = time.perf_counter()
    with isolated_global_state(model), torch.no_grad():
        model.eval()
        metrics = hook(step, model)
    return {f"eval/{name}": float(value) for name, value in metrics.items()}, time.perf_counter() - start
