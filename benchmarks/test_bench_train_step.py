"""Throughput of one training step, `clip` vs `maskclip`, tiny config, same batch, same process.

Run with `make bench` (or `pytest benchmarks/test_bench_train_step.py --benchmark-only`). The last case writes
`results/train_step.md` with the maskclip/clip ratio (target: at most 1.5x). The step of each variant is
`maskclip_bench.perf.build_step`, the one implementation `maskclip-bench bench` and benchmarks/test_bench_perf.py
time too (it mirrors the trainer's step, non-finite guards and logit-scale clamp included).
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import pytest
import torch

from maskclip_bench import perf

MODEL = "MaskCLIP-Tiny-8"
BATCH = int(os.environ.get("MASKCLIP_BENCH_BATCH", "64"))
RESULTS: dict[tuple[str, str], float] = {}
VARIANTS = ("clip", "maskclip", "maskclip-masked-view")  # perf.VARIANTS without the open_clip reference


@functools.lru_cache(maxsize=1)
def cpu_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return perf.make_batch(MODEL, BATCH, torch.device("cpu"))


def make_step(variant: str, precision: str):
    """One training step of `variant`: `maskclip_bench.perf.build_step` (the code `maskclip-bench bench` times)."""
    images, text = cpu_batch()
    return perf.build_step(variant, MODEL, images, text, precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step(benchmark, variant, precision):
    step = make_step(variant, precision)
    step()  # warm-up (allocations, autocast caches)
    benchmark.extra_info.update(batch=BATCH, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=5, iterations=1)
    RESULTS[(variant, precision)] = benchmark.stats.stats.median


@pytest.fixture(scope="module", autouse=True)
def ratio_table():
    """After all cases ran, write the ratio table (a fixture, so it also runs under --benchmark-only)."""
    yield
    if len(RESULTS) == 2 * len(VARIANTS):
        write_ratio_table()


def write_ratio_table() -> None:
    lines = [
        "# Training step: maskclip vs clip (tiny config, CPU)",
        "",
        f"Command: `make bench` (pytest-benchmark, median of 5 rounds), batch {BATCH}, MaskCLIP-Tiny-8 (64 px),",
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| variant | precision | s / step | samples / s | ratio to clip |",
        "|---|---|---|---|---|",
    ]
    for precision in ("fp32", "bf16"):
        base = RESULTS[("clip", precision)]
        for variant in VARIANTS:
            t = RESULTS[(variant, precision)]
            lines.append(f"| {variant} | {precision} | {t:.3f} | {BATCH / t:.0f} | {t / base:.2f}x |")
    out = Path(__file__).resolve().parents[1] / "results" / "train_step.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
