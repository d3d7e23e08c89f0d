"""The one place the project changes process-wide thread counts (for a block, restored after it) and counts the
cores it may use."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def thread_limit(threads: int, blas: bool = False) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block and restored after; with `blas`, numpy's and
    scikit-learn's BLAS pools too (the linear probe is BLAS-bound). `threads` <= 0 changes nothing."""
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if blas:
            with threadpool_limits(limits=threads):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(before)


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity where the OS reports one (a container or `taskset` may allow
    fewer than the machine has), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
