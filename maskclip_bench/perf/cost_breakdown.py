"""Where a training step's FLOPs and time go: each part of `Stepper`'s step run on its own (issue 15, item 1).

Method: separate timed calls. Each part is re-run in isolation on the step's own inputs (same model, batch, masks,
precision context), forward and, for the parts that carry gradient in the step, backward of its output, so the
part costs what it costs inside the step; FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one
call, time is the median wall time of `repeats` calls after one warm-up call. The sum of the parts is set beside
the whole step: the difference (`rest of the step`) is what no part covers: the loss terms, the non-finite guards,
autograd bookkeeping, Python glue.

The data wait comes from a real short training run (`measure_training_loop`): the trainer logs
`data_wait_fraction`, the share of wall time it spent getting batches ready (loader, masks, copies).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskclip_bench.perf import throughput as perf
from maskclip_core.config import TrainConfig
from maskclip_core.decoders import MaskedTokenHead
from maskclip_core.encoders import encode_text_features, encode_text_hidden, padding_positions, text_tower
from maskclip_core.losses import mlm_loss
from maskclip_core.model import caption_length, mlm_rows
from maskclip_core.precision import attention_context, compute_context
from maskclip_core.step import make_step_batch
from maskclip_core.thread_limit import thread_limit, usable_cores
from maskclip_core.trainer import train

WHOLE_STEP = "whole step (Stepper)"
REST = "rest of the step (losses, guards, glue)"


@dataclass
class PartCost:
    """One part of a step: FLOPs of one call (forward + backward where the step has one), median seconds."""

    part: str
    flops: int
    seconds: float
    note: str = ""


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def time_and_count(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[int, float]:
    """(FLOPs of one call, median wall seconds of `repeats` calls after one warm-up), CUDA synchronised."""
    fn()
    perf.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        perf.synchronize(device)
        times.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    perf.synchronize(device)
    return int(counter.get_total_flops()), _median(times)


def _backward(*outputs: torch.Tensor) -> None:
    """Backward of the outputs' sum: the same backward graph (and FLOPs) as the step's loss gradient into them."""
    total = sum(o.float().sum() for o in outputs)
    total.backward()


def step_parts(step: perf.OurStep, index: int = 0) -> dict[str, Callable[[], Any]]:
    """The parts of one `Stepper` step of `step`'s variant, as callables (only the parts the variant has), on the
    masks of step `index` (with `mlm_fraction` < 1 they also decide how many captions the MLM pass takes)."""
    model, device, precision = step.model, step.device, step.precision
    teacher, optimizer = step.stepper.teacher, step.optimizer
    images, text = step.batch["image"], step.batch["text"].to(device)
    batch = make_step_batch([step.batch], step.masks, index, step.env)
    extras = batch.extras[0]
    ids_keep, image_mask, mlm_mask = extras.get("ids_keep"), extras.get("image_mask"), extras.get("mlm_mask")
    parts: dict[str, Callable[[], Any]] = {}

    def in_context(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            model.zero_grad(set_to_none=True)
            with compute_context(device, precision):
                out = fn()
            if out is not None:
                with attention_context(device):
                    _backward(*out)
        return run

    sample_ids = torch.arange(images.shape[0])
    parts["mask sampling"] = lambda: step.masks(0, sample_ids, step.batch["text"])
    if model.cfg.contrastive_view == "full" or not model.needs_image_mask:
        parts["student full image pass"] = in_context(lambda: (model.clip.encode_image(images),))
    if model.needs_image_mask:
        parts["student masked image pass"] = in_context(
            lambda: model._masked_pass(images, ids_keep, image_mask))  # all three outputs may carry gradient
    if teacher is not None:
        def teacher_forward() -> None:
            teacher.targets(images)
            teacher.discard_pending()  # the soft target's centre statistics are not this benchmark's business

        parts["teacher forward (no grad)"] = in_context(teacher_forward)
    if model.image_decoder is not None:
        with torch.no_grad(), compute_context(device, precision):
            _, pooled, tokens = model._masked_pass(images, ids_keep, image_mask)
        if isinstance(model.image_decoder, MaskedTokenHead):
            dec_in = tokens.detach().requires_grad_(True)
            parts["image decoder"] = in_context(lambda: (model.image_decoder(dec_in, image_mask),))
        else:
            dec_in = torch.cat([pooled.unsqueeze(1), tokens], dim=1).detach().requires_grad_(True)
            parts["image decoder"] = in_context(lambda: (model.image_decoder(dec_in, ids_keep, image_mask),))
    parts["text pass"] = in_context(lambda: (encode_text_features(model.clip, text),))
    if model.text_decoder is not None:
        length = caption_length(text, model.pad_id)
        text_c, mask_c = text[:, :length], mlm_mask[:, :length]
        if model.cfg.mlm_fraction < 1.0:  # the step runs the pass on the drawn captions only
            rows = mlm_rows(mask_c)
            text_c, mask_c = text_c[rows], mask_c[rows]
        padding = padding_positions(text_c)
        parts["MLM text pass"] = in_context(lambda: (encode_text_hidden(
            model.clip, text_c, mask_c, model.mask_embedding, causal=model.cfg.mlm_causal, padding=padding),))
        with torch.no_grad(), compute_context(device, precision):
            hidden0 = encode_text_hidden(model.clip, text_c, mask_c, model.mask_embedding,
                                         causal=model.cfg.mlm_causal, padding=padding)
        hidden = hidden0.detach().requires_grad_(True)
        embedding = text_tower(model.clip).token_embedding.weight
        parts["text decoder + vocabulary head"] = in_context(lambda: (mlm_loss(
            model.text_decoder(hidden, mask_c, embedding, padding=padding), text_c[mask_c]),))

    def optimizer_part() -> None:
        # Gradients of the right shapes must exist: ones, as after any backward.
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(model.parameters(), step.cfg.optim.grad_clip, foreach=True)
        optimizer.step()

    parts["optimizer (grad clip + AdamW)"] = optimizer_part
    if teacher is not None:
        parts["EMA teacher update"] = lambda: teacher.update(model, 0.99)
    return parts


def measure_breakdown(variant: str, model_name: str, images: torch.Tensor, text: torch.Tensor, precision: str,
                      repeats: int = 3, seed: int = 0) -> list[PartCost]:
    """Per-part FLOPs and median time of one step of `variant` (clip, maskclip, maskclip-masked-view), then the
    whole step and the rest (whole minus the sum of the parts)."""
    step = perf.build_step(variant, model_name, images, text, precision, seed=seed)
    if not isinstance(step, perf.OurStep):
        raise ValueError("the breakdown covers our variants, not open_clip's loop")
    device = images.device
    costs = []
    # time_and_count warms up on step 0, times steps 1 .. repeats and counts step repeats + 1: the parts run on that
    # step's masks.
    for name, fn in step_parts(step, index=repeats + 1).items():
        flops, seconds = time_and_count(fn, repeats, device)
        costs.append(PartCost(name, flops, seconds, "fwd+bwd" if "pass" in name or "decoder" in name else ""))
    flops, seconds = time_and_count(step, repeats, device)
    parts_flops, parts_seconds = sum(c.flops for c in costs), sum(c.seconds for c in costs)
    costs.append(PartCost(REST, flops - parts_flops, seconds - parts_seconds, "whole minus the parts"))
    costs.append(PartCost(WHOLE_STEP, flops, seconds))
    return costs


@dataclass
class LoopResult:
    """A short real training run: samples/s from the median interval between steps after the first log window
    (the statistic `bench` takes of its step-only times), and the last window's share of time waiting for
    batches."""

    samples_per_s: float
    data_wait_fraction: float
    steps: int
    batch_size: int
    window_samples_per_s: float = 0.0  # the trainer's own figure: mean over the last log window
    workers: int = 1  # loader workers of the run


def measure_training_loop(variant: str, model_name: str, batch_size: int, precision: str, steps: int = 12,
                          window: int = 6, workers: int = 1) -> LoopResult:
    """Run `maskclip_core.trainer.train` on the synthetic `shapes` data for `steps` steps (logged every `window`
    steps, no checkpoint before the end). Samples/s comes from the median wall time between the ends of
    consecutive steps after the first window (which holds warm-up): each interval holds everything the trainer
    does per step (batch, masks, step, logging), and the median is what `bench` takes of its step-only times."""
    cfg = TrainConfig()
    cfg.model.name = model_name
    for key, value in perf.VARIANTS[variant].items():
        setattr(cfg.method, key, value)
    cfg.run.steps, cfg.run.batch_size, cfg.run.precision = steps, batch_size, precision
    cfg.run.log_every, cfg.run.checkpoint_every = window, steps
    cfg.run.device = "cpu" if not torch.cuda.is_available() else "cuda"
    cfg.data.workers = workers
    last: dict[str, Any] = {}
    ends: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        cfg.run.out = out
        train(cfg, on_log=last.update, on_step=lambda step, total: ends.append(time.perf_counter()))
    intervals = [b - a for a, b in zip(ends[window - 1:], ends[window:])] or [b - a for a, b in zip(ends, ends[1:])]
    median = _median(intervals) if intervals else float("nan")
    return LoopResult(batch_size / median, float(last["data_wait_fraction"]), steps, batch_size,
                      float(last["samples_per_s"]), workers)


def measure_data_prep(model_name: str, batch_size: int, batches: int = 4, seed: int = 0) -> float:
    """Median seconds to read one batch of the trainer's `shapes` data in this process (no loader worker):
    render, transform, tokenize, collate. In training a loader worker does this work; it hides behind the step
    only where the step leaves a CPU core free."""
    stream = perf.train_stream(model_name, batch_size, seed)
    times = []
    with thread_limit(1):  # as in a loader worker, which torch runs with one thread
        next(stream)  # warm-up: the first read builds the sampler's permutation
        for _ in range(batches):
            start = time.perf_counter()
            next(stream)
            times.append(time.perf_counter() - start)
    return _median(times)


def render_breakdown(model: str, precision: str, batch_size: int, tables: dict[str, list[PartCost]],
                     command: str, loops: dict[str, LoopResult] | None = None,
                     memory: dict[str, int | None] | None = None,
                     step_only: dict[str, float] | None = None, data_seconds: float | None = None,
                     cores: int | None = None) -> str:
    """Markdown: one column pair (GFLOPs, ms) per variant, one row per part; then the data wait lines, each with
    the in-process cost of reading a batch (`data_seconds`, see `measure_data_prep`) as a share of the step."""
    variants = list(tables)
    names: list[str] = []
    for costs in tables.values():
        names += [c.part for c in costs if c.part not in names and c.part not in (REST, WHOLE_STEP)]
    names += [REST, WHOLE_STEP]
    header = "| part | " + " | ".join(f"{v} GFLOPs | {v} ms | {v} % of step time" for v in variants) + " |"
    lines = [f"### Cost breakdown · {model} · {precision} · batch {batch_size}", "",
             f"- Command: `{command}`",
             "- Method: separate timed calls (each part re-run alone on the step's inputs; passes and decoders "
             "forward + backward; median of the repeats); FLOPs by `torch.utils.flop_counter.FlopCounterMode`.",
             "", header, "|---|" + "---|---|---|" * len(variants)]
    for name in names:
        cells = []
        for v in variants:
            found = {c.part: c for c in tables[v]}
            whole = found[WHOLE_STEP].seconds
            c = found.get(name)
            if c is None:
                cells.append("- | - | -")
            else:
                cells.append(f"{c.flops / 1e9:,.2f} | {1e3 * c.seconds:,.1f} | {100 * c.seconds / whole:.0f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if memory:
        lines += ["", "Peak memory per variant (MiB): " + ", ".join(
            f"{v} {'-' if b is None else f'{b / 2**20:,.0f}'}" for v, b in memory.items())]
    if loops:
        workers = {r.workers for r in loops.values()}
        lines += ["", f"A real training loop (`maskclip_core.trainer.train` on `shapes`, "
                  f"{'/'.join(map(str, sorted(workers)))} loader worker(s), at the lowest CPU priority on CPU): "
                  "samples/s from the median interval between consecutive steps after the first log window, as "
                  "`bench` takes the median step; the trainer's own log figure (mean over its last window) in "
                  "brackets; `data_wait_fraction` = wall time spent fetching the batch, drawing masks, copying:", ""]
        for v, r in loops.items():
            line = (f"- {v}: {r.samples_per_s:,.1f} samples/s in the trainer ({r.window_samples_per_s:,.1f} over "
                    f"the last window), data wait {100 * r.data_wait_fraction:.1f} % of wall time ({r.steps} steps, "
                    f"batch {r.batch_size})")
            bench = (step_only or {}).get(v)
            if bench:
                ratio = r.samples_per_s / bench
                line += (f"; trainer / bench step-only samples/s: {ratio:.3f} (target: >= 0.95): "
                         f"{'met' if ratio >= 0.95 else 'NOT met'}")
                if data_seconds is not None:
                    line += f"; reading its batch costs {100 * data_seconds * bench / r.batch_size:.1f} % of the step"
            lines.append(line)
        if data_seconds is not None:
            lines += ["", f"Reading one batch of {batch_size} in one process (render, transform, tokenize, collate: "
                      f"`measure_data_prep`, no worker) takes {1e3 * data_seconds:,.1f} ms. The loader workers do "
                      f"this on the same {cores or usable_cores()} CPU core(s) the step's threads use, so where the "
                      "step leaves no core free the work slows the step instead of hiding behind it."]
    return "\n".join(lines) + "\n"
