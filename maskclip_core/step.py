"""One optimizer step of the student, the same for every caller (the trainer, `maskclip-bench bench`).

data -> `StepBatch` (micro-batches, their masks, sample ids over the global batch) -> `Stepper`: every micro-batch's
forward and backward (contrastive loss over the whole step: all ranks, all micro-batches), the agreement between
ranks on faults, gradient clipping, AdamW, logit-scale clamp, EMA-teacher update -> `StepOutcome`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from . import faults, rng
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_max, all_reduce_sum
from .ema import Teacher, default_momentum, momentum_at
from .masking import block_masking, random_masking
from .mlm import bert_replacement, mlm_mask
from .model import FeatureBank, MaskCLIP, caption_length
from .precision import attention_context, compute_context
from .schedule import cosine_lr, phase_on, start_step

MAX_LOGIT_SCALE = math.log(100.0)


class MaskSampler:
    """Image masks and MLM positions for a batch, drawn per sample from (seed, step, global sample id)."""

    def __init__(self, model: MaskCLIP, seed: int):
        self.model, self.seed = model, seed
        visual = model.clip.visual
        self.grid = tuple(visual.grid_size)

    def __call__(self, step: int, sample_ids: torch.Tensor, text: torch.Tensor, distill: bool = True,
                 mlm: bool = True) -> dict[str, torch.Tensor]:
        """The masks of step `step`; `distill` / `mlm` False (their phase is off) leave out what only they use."""
        cfg, out = self.model.cfg, {}
        if self.model.needs_image_mask and (distill or cfg.contrastive_view == "masked"):
            n = self.grid[0] * self.grid[1]
            if cfg.mask_strategy == "block":
                gens = [rng.sample_generator(self.seed, step, int(i), rng.STREAM_IMAGE_MASK) for i in sample_ids]
                out["ids_keep"], out["image_mask"] = block_masking(gens, self.grid, cfg.mask_ratio)
            else:
                noise = rng.per_sample_uniform(self.seed, step, sample_ids, n, rng.STREAM_IMAGE_MASK)
                out["ids_keep"], out["image_mask"] = random_masking(noise, cfg.mask_ratio)
        if self.model.text_decoder is not None and mlm:
            length = text.shape[1]
            noise = rng.per_sample_uniform(self.seed, step, sample_ids, length, rng.STREAM_MLM)
            out["mlm_mask"] = mlm_mask(text, noise, cfg.mlm_ratio, self.model.special_token_ids, self.model.pad_id)
            if cfg.mlm_fraction < 1.0:  # MLM on a fraction of the batch: a sample is in by its own draw
                chosen = rng.per_sample_uniform(self.seed, step, sample_ids, 1, rng.STREAM_MLM_SUBSET)[:, 0]
                out["mlm_mask"] &= (chosen < cfg.mlm_fraction).unsqueeze(1)
            if cfg.mlm_replace == "bert":
                choice = rng.per_sample_uniform(self.seed, step, sample_ids, length, rng.STREAM_MLM_REPLACE)
                token = rng.per_sample_uniform(self.seed, step, sample_ids, length, rng.STREAM_MLM_TOKEN)
                out["mlm_embed"], out["mlm_random"] = bert_replacement(out["mlm_mask"], choice, token,
                                                                       self.model.vocab_size)
        return out


@dataclass
class StepBatch:
    """One optimizer step's data on this rank: `accum_freq` micro-batches, their masks and sample ids."""

    images: list[torch.Tensor]
    texts: list[torch.Tensor]
    extras: list[dict[str, Any]]
    bad: int
    distill: bool = True  # distill_start's phase is on at this step
    mlm: bool = True  # mlm_start's phase is on at this step


def make_step_batch(batches: list[dict[str, Any]], masks: MaskSampler, step: int, env: DistEnv,
                    total: int | None = None) -> StepBatch:
    """A step from its micro-batches (as the loader collates them), with masks drawn. A sample's id is its position
    in the step's global batch (micro-batch, then rank, then index), so its mask is the same for any split of the
    step over ranks and micro-batches. `total` (the run's steps) places the step in distill_start / mlm_start's
    phases; None: every phase on."""
    m = masks.model.cfg
    distill = total is None or phase_on(m.distill_start, step, total)
    mlm = total is None or phase_on(m.mlm_start, step, total)
    k, b = len(batches), batches[0]["text"].shape[0]
    glob = b * env.world_size
    images, texts, extras, bad = [], [], [], 0
    for m, batch in enumerate(batches):
        bad += int(batch.get("bad", 0))
        ids = step * k * glob + m * glob + env.rank * b + torch.arange(b)
        text = batch["text"]
        extras.append({key: v.to(env.device) for key, v in masks(step, ids, text.cpu(), distill, mlm).items()})
        images.append(batch["image"].to(env.device, non_blocking=True))
        texts.append(text.to(env.device, non_blocking=True))
    return StepBatch(images, texts, extras, bad, distill, mlm)


def _mlm_normalisation(model: MaskCLIP, step_batch: StepBatch, env: DistEnv, k: int) -> dict[str, Any]:
    """`mlm_length` and `mlm_denominator` for every shard of the step (see `mlm_loss`): the longest caption and
    the masked-token count of the whole step (all ranks, all micro-batches) per shard."""
    if model.text_decoder is None or not step_batch.mlm or (env.world_size == 1 and k == 1):
        return {}  # one shard: the plain mean over the batch's masked tokens
    stats = torch.tensor([
        max(caption_length(t, model.pad_id) for t in step_batch.texts),
        sum(int(e["mlm_mask"].sum()) for e in step_batch.extras),
    ], dtype=torch.float64, device=env.device)
    length = int(all_reduce_max(stats[:1].clone(), env))
    count = float(all_reduce_sum(stats[1:].clone(), env))
    return {"mlm_length": length, "mlm_denominator": max(count, 1.0) / (env.world_size * k)}


@dataclass
class StepOutcome:
    """What a step did. `losses`: this rank's detached loss terms for the whole step (contrastive: the step's
    loss; the others: means over its micro-batches). `flags`: [SIGTERM seen, bad samples, non-finite loss], each
    summed over ranks, so every rank takes the same decision. `applied`: the optimizer and the teacher moved;
    `fault`: not applied because of a non-finite loss or gradient (a step that fp16's GradScaler skips for
    overflow is not applied but is no fault: the scaler lowers its scale and goes on)."""

    losses: dict[str, torch.Tensor]
    applied: bool
    flags: list[float]
    lr: float
    momentum: float
    grad_norm: float  # before clipping (unscaled under fp16)
    fault: bool = False


class Stepper:
    """Runs optimizer steps of a student (plain module `model`, wrapped for the forward as `forward`: DDP and/or
    torch.compile) with its optimizer, EMA teacher and fp16 GradScaler."""

    def __init__(self, cfg: TrainConfig, model: MaskCLIP, optimizer: torch.optim.Optimizer, env: DistEnv,
                 teacher: Teacher | None = None, forward: torch.nn.Module | None = None,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.cfg, self.model, self.optimizer, self.env = cfg, model, optimizer, env
        self.teacher, self.scaler = teacher, scaler
        self.forward = forward if forward is not None else model  # (a compiled module has no truth value)

    def __call__(self, batch: StepBatch, step: int, total: int, stop_requested: bool = False) -> StepOutcome:
        """Step number `step` (0-based) of `total`. A non-finite loss or gradient skips the update (the
        optimizer and the teacher do not move); the caller decides when to give up."""
        cfg, model, optimizer, env = self.cfg, self.model, self.optimizer, self.env
        teacher, scaler, device = self.teacher, self.scaler, env.device
        k = len(batch.images)
        lr = cosine_lr(step, cfg.optim.lr, cfg.optim.warmup, total, cfg.optim.min_lr, cfg.optim.warmup_start_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mlm = _mlm_normalisation(model, batch, env, k)
        use_teacher = teacher is not None and batch.distill
        if use_teacher and cfg.method.distill_start > 0 and step == start_step(cfg.method.distill_start, total):
            teacher.restart_from(model)  # switched on: the teacher starts from the student, as at a run's start
        with compute_context(device, cfg.run.precision):
            targets = [teacher.targets(x) if use_teacher else None for x in batch.images]
            bank = None
            if k > 1:  # open_clip's accum_freq: cache every micro-batch's contrastive features first
                feats = [model.contrastive_features(x, t, e.get("ids_keep"), e.get("image_mask"))
                         for x, t, e in zip(batch.images, batch.texts, batch.extras)]
                bank = ([f[0] for f in feats], [f[1] for f in feats])
        optimizer.zero_grad(set_to_none=True)
        logged: dict[str, torch.Tensor] = {}
        loss_finite = True
        for m in range(k):
            # DDP all-reduces gradients only after the last micro-batch's backward.
            sync = self.forward.no_sync() if env.distributed and m < k - 1 else contextlib.nullcontext()
            with sync:
                with compute_context(device, cfg.run.precision):
                    phases = {} if batch.distill and batch.mlm else {"distill": batch.distill, "mlm": batch.mlm}
                    losses = self.forward(batch.images[m], batch.texts[m], teacher_targets=targets[m],
                                          feature_bank=FeatureBank(*bank, m) if bank else None,
                                          **batch.extras[m], **mlm, **phases)
                    loss = model.total_loss(losses, k)
                loss_finite &= bool(torch.isfinite(loss))
                with attention_context(device):
                    (scaler.scale(loss) if scaler is not None else loss).backward()
            for name, value in losses.items():
                v = value.detach().float()
                logged[name] = v if name == "loss_contrastive" else logged.get(name, 0) + v / k
        faults.point("train_step", step + 1)  # tests: a kill mid-step (after backward, before the update)
        if scaler is not None:
            scaler.unscale_(optimizer)
        # One small all-reduce carries what every rank must agree on (gradients are identical after DDP's).
        flags = all_reduce_sum(torch.tensor([float(stop_requested), float(batch.bad), float(not loss_finite)],
                                            dtype=torch.float64, device=device), env).tolist()
        # The global gradient norm (which clipping needs anyway) is non-finite exactly when some gradient is: one
        # fused reduction and one host sync instead of a check per parameter. With clipping off (grad_clip 0)
        # the infinite max_norm leaves the gradients unchanged.
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        # Under fp16's GradScaler the gradients were unscaled above, so an overflow shows here as a non-finite
        # norm too: the step is then skipped like any other (optimizer, logit-scale clamp and teacher all stay),
        # and the scaler lowers its scale. Only a non-finite loss, or a non-finite gradient without a scaler,
        # counts as a fault.
        loss_ok = flags[2] == 0
        applied = loss_ok and bool(torch.isfinite(grad_norm))
        base = cfg.method.ema_momentum if cfg.method.ema_momentum is not None else default_momentum(total)
        momentum = momentum_at(step, total, base, cfg.method.ema_momentum_end)
        if applied:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            every = cfg.method.teacher_every
            if use_teacher and (step + 1) % every == 0:
                # Every k steps with momentum**k: the same averaging horizon in steps as an update every step.
                teacher.update(model, momentum ** every)
        else:
            optimizer.zero_grad(set_to_none=True)
            if teacher is not None:
                teacher.discard_pending()
            if scaler is not None:
                scaler.update()
        fault = not applied and (not loss_ok or scaler is None)
        return StepOutcome(logged, applied, flags, lr, momentum, float(grad_norm), fault)
