"""The training loop shared by `clip` and `maskclip`: batch -> masks -> (teacher targets) -> losses dict -> summed
loss -> AdamW step -> logit-scale clamp -> EMA update -> metrics.jsonl / checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from . import rng
from . import faults
from .checkpoint import CheckpointDir
from .config import TrainConfig, validate
from .data.spec import build_train_dataset, parse_data_spec
from .ema import Teacher, momentum_at
from .errors import CheckpointError, DataError, MaskClipError
from .loader import BatchStream
from .masking import block_masking, random_masking
from .mlm import mlm_mask
from .model import MaskCLIP
from .optim import build_optimizer
from .precision import compute_context
from .runlog import MetricsLog
from .schedule import cosine_lr
from .towers import create_clip, get_tokenizer, image_size_of

logger = logging.getLogger(__name__)
LOSS_KEYS = ("loss_contrastive", "loss_distill", "loss_mlm")
MAX_LOGIT_SCALE = math.log(100.0)


def special_token_ids(tokenizer: Any) -> tuple[tuple[int, ...], int]:
    """(ids never masked by MLM, padding id) of an open_clip tokenizer."""
    ids = tuple(i for i in (getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None))
                if i is not None)
    return ids, int(getattr(tokenizer, "pad_token_id", 0) or 0)


def build_model(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[MaskCLIP, Any]:
    """Student model and tokenizer for a config (random init; nothing is downloaded)."""
    clip = create_clip(cfg.model.name)
    tokenizer = get_tokenizer(cfg.model.name)
    special, pad = special_token_ids(tokenizer)
    return MaskCLIP(clip, cfg.method, special, pad, rank=rank, world_size=world_size), tokenizer


def train_transform(cfg: TrainConfig, clip: torch.nn.Module) -> Callable:
    """open_clip's transforms. `shapes` is rendered at the model's size and never cropped: its captions name
    positions ("top left"), which a random crop would falsify."""
    size = image_size_of(clip)
    if parse_data_spec(cfg.data.spec).kind == "shapes":
        return open_clip.image_transform(size, is_train=False)
    return open_clip.image_transform(size, is_train=True, aug_cfg={"scale": (cfg.data.aug_scale_min, 1.0)})


class MaskSampler:
    """Image masks and MLM positions for a batch, drawn per sample from (seed, step, global sample id)."""

    def __init__(self, model: MaskCLIP, seed: int):
        self.model, self.seed = model, seed
        visual = model.clip.visual
        self.grid = tuple(visual.grid_size)

    def __call__(self, step: int, sample_ids: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, out = self.model.cfg, {}
        if self.model.needs_image_mask:
            n = self.grid[0] * self.grid[1]
            if cfg.mask_strategy == "block":
                gens = [rng.sample_generator(self.seed, step, int(i), rng.STREAM_IMAGE_MASK) for i in sample_ids]
                out["ids_keep"], out["image_mask"] = block_masking(gens, self.grid, cfg.mask_ratio)
            else:
                noise = rng.per_sample_uniform(self.seed, step, sample_ids, n, rng.STREAM_IMAGE_MASK)
                out["ids_keep"], out["image_mask"] = random_masking(noise, cfg.mask_ratio)
        if self.model.text_decoder is not None:
            noise = rng.per_sample_uniform(self.seed, step, sample_ids, text.shape[1], rng.STREAM_MLM)
            out["mlm_mask"] = mlm_mask(text, noise, cfg.mlm_ratio, self.model.special_token_ids, self.model.pad_id)
        return out


@dataclass
class TrainResult:
    """What a finished (or SIGTERM-stopped) run leaves behind."""

    out_dir: Path
    steps: int
    last_metrics: dict[str, Any]
    wall_time_s: float
    stopped_early: bool = False
    skipped_steps: int = 0


class NonFiniteLossError(MaskClipError):
    """Too many consecutive non-finite losses or gradients."""


class BadDataError(DataError):
    """More of the training data was unreadable than `run.max_bad_fraction` allows."""


@dataclass
class DataHealth:
    """Counts of samples read and of bad ones skipped (unreadable image, empty caption, ...), over the whole run."""

    samples: int = 0
    bad: int = 0

    def add(self, good: int, bad: int) -> None:
        """Count one batch: `good` samples used, `bad` skipped to fill it."""
        self.samples += good + bad
        self.bad += bad

    def check(self, max_fraction: float) -> None:
        """Raise BadDataError when the bad fraction so far exceeds `max_fraction`. Checked only once enough
        samples were read for one bad sample not to exceed it by itself (1 of 10 is not yet 10 %)."""
        if self.bad == 0:
            return
        enough = self.samples >= (1.0 / max_fraction if max_fraction > 0 else 0)
        if enough and self.bad / self.samples > max_fraction:
            raise BadDataError(
                f"{self.bad} of {self.samples} training samples read so far were unreadable or empty "
                f"({100 * self.bad / self.samples:.1f}% > max_bad_fraction {100 * max_fraction:g}%); fix the data "
                f"or raise --set max_bad_fraction=..."
            )


@contextlib.contextmanager
def stop_on_sigterm():
    """Yield a flag that turns true on SIGTERM (what SLURM and Kubernetes send), so the loop can checkpoint and
    return cleanly at the end of the current step instead of dying mid-write."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_total_steps(cfg: TrainConfig, stream: BatchStream) -> int:
    """`epochs` (when > 0 and the data has a length) overrides `steps`."""
    if cfg.run.epochs > 0 and stream.batches_per_epoch:
        return max(1, int(round(cfg.run.epochs * stream.batches_per_epoch)))
    return cfg.run.steps


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def _finite_grads(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Run (or resume) one training run as `cfg` says; writes config.json, metrics.jsonl and checkpoints."""
    validate(cfg)
    run = cfg.run
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    out = Path(run.out)
    ckpts = CheckpointDir(out / "checkpoints", run.keep_checkpoints)
    ckpts.clean_temporaries()
    state = None
    if resume:
        state, ckpt_path = ckpts.load_latest()
        logger.info("resuming from %s (step %d)", ckpt_path, state["step"])
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")

    torch.manual_seed(run.seed)
    random.seed(run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = build_model(cfg)
    model.to(device)
    teacher = Teacher(model, cfg.method.distill_target, cfg.method.soft_teacher_temp,
                      cfg.method.soft_center_momentum).to(device) if model.needs_teacher else None
    optimizer = build_optimizer(model, cfg.optim)
    dataset = build_train_dataset(
        cfg.data.spec, transform=train_transform(cfg, model.clip), tokenizer=tokenizer, seed=run.seed,
        image_size=image_size_of(model.clip), csv_img_key=cfg.data.csv_img_key,
        csv_caption_key=cfg.data.csv_caption_key, shuffle_buffer=cfg.data.shuffle_buffer,
        resampled=cfg.data.resampled, csv_root=cfg.data.csv_root, allow_outside_root=cfg.data.allow_outside_root,
    )
    health = DataHealth()

    step, epoch, batch_in_epoch = 0, 0, 0
    if state is not None:
        try:
            model.load_state_dict({**{f"clip.{k}": v for k, v in state["clip"].items()}, **state["extras"]})
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt_path} does not match this config's model: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        _set_rng_state(state["rng"])
        health = DataHealth(**state.get("data", {}))
    stream = BatchStream(dataset, run.batch_size, run.seed, cfg.data.workers, epoch, batch_in_epoch)
    total = resolve_total_steps(cfg, stream)
    log = MetricsLog(out / "metrics.jsonl", resume_step=step if state is not None else None)
    masks = MaskSampler(model, run.seed)

    def checkpoint() -> None:
        extras = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
        ckpts.save({
            "step": step, "epoch": stream.epoch, "batch_in_epoch": stream.batch_in_epoch,
            "config": cfg.to_dict(), "clip": model.clip.state_dict(), "extras": extras,
            "teacher": teacher.state_dict() if teacher is not None else None,
            "optimizer": optimizer.state_dict(), "rng": _rng_state(),
            "data": {"samples": health.samples, "bad": health.bad},
            "nonfinite": {"skipped": skipped, "consecutive": consecutive},
        })

    model.train()
    start_time = time.time()
    with stop_on_sigterm() as stop:  # SIGTERM: finish the step, checkpoint, return
        window_start, window_samples = time.perf_counter(), 0
        last: dict[str, Any] = {}
        counters = state.get("nonfinite", {}) if state is not None else {}
        skipped, consecutive = counters.get("skipped", 0), counters.get("consecutive", 0)
        while step < total:
            lr = cosine_lr(step, cfg.optim.lr, cfg.optim.warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(stream)
            health.add(run.batch_size, int(batch.get("bad", 0)))
            health.check(run.max_bad_fraction)
            image, text = batch["image"].to(device, non_blocking=True), batch["text"].to(device, non_blocking=True)
            sample_ids = torch.arange(step * run.batch_size, (step + 1) * run.batch_size)
            extra = {k: v.to(device) for k, v in masks(step, sample_ids, text.cpu()).items()}
            with compute_context(device, run.precision):
                targets = teacher.targets(image) if teacher is not None else None
                losses = model(image, text, teacher_targets=targets, **extra)
                loss = model.total_loss(losses)
            optimizer.zero_grad(set_to_none=True)
            momentum = momentum_at(step, total, cfg.method.ema_momentum, cfg.method.ema_momentum_end)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                finite = _finite_grads(model)
            faults.point("train_step", step + 1)  # tests: a kill mid-step (after backward, before the update)
            if finite:
                consecutive = 0
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                with torch.no_grad():
                    model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                if teacher is not None:
                    teacher.update(model, momentum)
            else:
                # Skip the step: neither the optimizer nor the teacher moves; the step still counts (the batch is
                # consumed), so the schedule and data position stay those of an uninterrupted run.
                optimizer.zero_grad(set_to_none=True)
                skipped, consecutive = skipped + 1, consecutive + 1
                logger.warning("step %d: non-finite loss or gradient, step skipped", step + 1)
                if consecutive >= run.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{consecutive} consecutive non-finite losses/gradients at step {step + 1}; stopped, the last "
                        f"good checkpoint is {ckpts.last}"
                    )
            step += 1
            window_samples += run.batch_size
            if on_step is not None:
                on_step(step, total)
            if step % run.log_every == 0 or step == total:
                now = time.perf_counter()
                last = {
                    "step": step, "epoch": stream.epoch, "loss": float(loss.detach()),
                    **{k: (float(losses[k].detach()) if k in losses else None) for k in LOSS_KEYS},
                    "lr": lr, "logit_scale": float(model.clip.logit_scale.detach().exp()),
                    "ema_momentum": momentum if teacher is not None else None,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                    "nonfinite_skipped": skipped, "bad_samples": health.bad, "samples_read": health.samples,
                }
                log.write(last)
                if on_log is not None:
                    on_log(last)
                window_start, window_samples = now, 0
            if step % run.checkpoint_every == 0 or step == total or stop.is_set():
                checkpoint()
            if stop.is_set():
                return TrainResult(out, step, last, time.time() - start_time, stopped_early=True, skipped_steps=skipped)
        return TrainResult(out, step, last, time.time() - start_time, skipped_steps=skipped)
