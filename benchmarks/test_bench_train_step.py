"""Throughput of one training step, `clip` vs `maskclip`, tiny config, same batch, same process.

Run with `make bench` (or `pytest benchmarks/test_bench_train_step.py --benchmark-only`). The last case writes
`results/train_step.md` with the maskclip/clip ratio (target: at most 1.5x).
"""
from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from maskclip_core.config import TrainConfig
from maskclip_core.ema import Teacher, momentum_at
from maskclip_core.optim import build_optimizer
from maskclip_core.precision import compute_context
from maskclip_core.trainer import MaskSampler, build_model

BATCH = 64
RESULTS: dict[tuple[str, str], float] = {}
VARIANTS = {
    "clip": {"name": "clip"},
    "maskclip": {"name": "maskclip"},
    "maskclip-masked-view": {"name": "maskclip", "contrastive_view": "masked"},
}


def make_step(variant: str, precision: str):
    torch.manual_seed(0)
    cfg = TrainConfig()
    for k, v in VARIANTS[variant].items():
        setattr(cfg.method, k, v)
    model, tok = build_model(cfg)
    teacher = Teacher(model, "feature") if model.needs_teacher else None
    opt = build_optimizer(model, cfg.optim)
    masks = MaskSampler(model, 0)
    images = torch.randn(BATCH, 3, 64, 64)
    text = tok([f"a large red star in the top left and a small blue ring number {i}" for i in range(BATCH)])
    state = {"step": 0}

    def step():
        s = state["step"]
        extra = masks(s, torch.arange(s * BATCH, (s + 1) * BATCH), text)
        with compute_context(torch.device("cpu"), precision):
            targets = teacher.targets(images) if teacher is not None else None
            losses = model(images, text, teacher_targets=targets, **extra)
            loss = model.total_loss(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if teacher is not None:
            teacher.update(model, momentum_at(s, 1000, 0.996, 1.0))
        state["step"] += 1

    return step


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
