"""pytest-benchmark: one training step of each `maskclip-bench bench` variant (open_clip's loop, our clip,
maskclip, maskclip with the masked contrastive view), tiny config, CPU, fp32 and bf16, on one fixed batch.

The steps are `maskclip_bench.perf.throughput.build_step`, the same code the `bench` command times. Run with `make bench` or
`pytest benchmarks/test_bench_perf.py --benchmark-only`; MASKCLIP_BENCH_BATCH sets the batch (default 64).
"""
from __future__ import annotations

import os

import pytest
import torch

from maskclip_bench.perf import throughput as perf

MODEL = "MaskCLIP-Tiny-8"
BATCH = int(os.environ.get("MASKCLIP_BENCH_BATCH", "64"))


@pytest.fixture(scope="module")
def batch():
    return perf.make_batch(MODEL, BATCH, torch.device("cpu"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(perf.DEFAULT_VARIANTS))
def test_perf_step(benchmark, batch, variant, precision):
    images, text = batch
    step = perf.build_step(variant, MODEL, images, text, precision)
    step()  # warm-up (allocations, optimizer state, autocast caches)
    benchmark.extra_info.update(batch=BATCH, threads=torch.get_num_threads(), params=step.num_params)
    benchmark.pedantic(step, rounds=5, iterations=1)
