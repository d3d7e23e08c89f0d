"""The training loop shared by `clip` and `maskclip`: set-up (ranks, model, teacher, optimizer, data, resume),
then per step: micro-batches + masks -> `Stepper` (losses dict -> summed loss -> backward -> AdamW -> logit-scale
clamp -> EMA update) -> data and fault bookkeeping -> metrics.jsonl (rank 0) -> checkpoint (rank 0).
"""
from __future__ import annotations

import contextlib
import logging
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

from .checkpoint import CheckpointDir
from .config import TrainConfig, validate
from .data.spec import build_train_dataset, parse_data_spec
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed
from .ema import Teacher, default_momentum
from .errors import BadDataError, CheckpointError, NonFiniteLossError
from .loader import BatchStream
from .model import MaskCLIP
from .optim import build_optimizer
from .periodic_eval import EvalHook, eval_due, run_eval
from .precision import PrecisionChoice, grad_scaler, resolve_precision
from .reporting import Reporter, build_reporters, report
from .runlog import LOSS_KEYS, MetricsLog
from .step import MaskSampler, Stepper, make_step_batch
from .towers import create_clip, get_tokenizer, image_size_of

logger = logging.getLogger(__name__)


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


@dataclass
class TrainResult:
    """What a finished (or SIGTERM-stopped) run leaves behind."""

    out_dir: Path
    steps: int
    last_metrics: dict[str, Any]
    wall_time_s: float
    stopped_early: bool = False
    skipped_steps: int = 0


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


def _set_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every open_clip transformer (both towers, the decoders) in the backward pass."""
    from open_clip.transformer import Transformer

    for module in model.modules():
        if isinstance(module, Transformer):
            module.grad_checkpointing = True


def train(
    cfg: TrainConfig,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: EvalHook | None = None,
) -> TrainResult:
    """Run (or resume) one training run as `cfg` says; writes config.json, metrics.jsonl and checkpoints.

    With `run.eval_every` > 0, `on_eval(step, student)` is called on rank 0 every that many steps (and at step 0
    and the last step) and its metrics join that step's metrics.jsonl line as `eval/<name>`; it cannot change the
    run (see maskclip_core.periodic_eval).

    Under torchrun (or SLURM) every rank runs this: data-parallel with DistributedDataParallel, the contrastive
    loss over the global batch, rank 0 alone writing; the result equals one process with the global batch.
    """
    validate(cfg)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    env = init_distributed(cfg.run.device)
    try:
        cfg = resolve_for_device(cfg, env)
        return _train(cfg, env, resume, on_log, on_step, on_eval)
    finally:
        if env.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def resolve_for_device(cfg: TrainConfig, env: DistEnv) -> TrainConfig:
    """A copy of `cfg` with `run.precision` resolved for this device (`auto`), warning once where the choice will be
    slow or where the objective differs from the single-process one."""
    choice: PrecisionChoice = resolve_precision(cfg.run.precision, env.device)
    cfg = TrainConfig.from_dict(cfg.to_dict())
    cfg.run.precision = choice.precision
    if env.is_primary:
        logger.info(choice.describe("auto"))
        if choice.warning:
            logger.warning(choice.warning)
        m = cfg.method
        if env.world_size > 1 and not m.gather_with_grad and m.name == "maskclip" and (m.w_distill or m.w_mlm):
            logger.warning(
                "warning: gather_with_grad off on %d ranks: each rank's contrastive gradient is 1/%d of the "
                "single-process one while the distillation and MLM gradients are not, so w_distill and w_mlm act "
                "%d times larger than set", env.world_size, env.world_size, env.world_size)
    return cfg


def _train(cfg: TrainConfig, env: DistEnv, resume: bool, on_log: Callable[[dict[str, Any]], None] | None,
           on_step: Callable[[int, int], None] | None, on_eval: EvalHook | None) -> TrainResult:
    run, k = cfg.run, cfg.run.accum_freq
    out = Path(run.out)
    ckpts = CheckpointDir(out / "checkpoints", run.keep_checkpoints)
    state = None
    if resume:  # every rank reads the same newest good checkpoint
        state, ckpt_path = ckpts.load_latest()
        logger.info("resuming from %s (step %d)", ckpt_path, state["step"])
    if env.is_primary:
        ckpts.clean_temporaries()
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(run.seed)  # the same initial weights on every rank
    random.seed(run.seed)
    device = env.device
    model, tokenizer = build_model(cfg, env.rank, env.world_size)
    model.to(device)
    if run.grad_checkpointing:
        _set_grad_checkpointing(model)
    teacher = Teacher(model, cfg.method.distill_target, cfg.method.soft_teacher_temp,
                      cfg.method.soft_center_momentum).to(device) if model.needs_teacher else None
    optimizer = build_optimizer(model, cfg.optim, fused=run.fused_optimizer)
    scaler = grad_scaler(device, run.precision)
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
            model.load_state_dict({**{f"clip.{k_}": v for k_, v in state["clip"].items()}, **state["extras"]})
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt_path} does not match this config's model: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        _set_rng_state(state["rng"])
        health = DataHealth(**state.get("data", {}))
    # The teacher and the optimizer see the plain module; DDP (and torch.compile) only wrap the forward.
    forward: torch.nn.Module = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # distill_start / mlm_start leave the decoders out of the first steps' graphs: DDP must look for them.
        phased = cfg.method.distill_start > 0 or cfg.method.mlm_start > 0
        forward = DistributedDataParallel(model, device_ids=[env.local_rank] if device.type == "cuda" else None,
                                          find_unused_parameters=phased)
    if run.torchcompile:
        forward = torch.compile(forward, backend=run.compile_backend)
    stream = BatchStream(dataset, run.batch_size, run.seed, cfg.data.workers, epoch, batch_in_epoch,
                         rank=env.rank, world_size=env.world_size)
    total = resolve_total_steps(cfg, stream)
    if cfg.method.ema_momentum is None:  # "auto": run-length aware (ema.default_momentum)
        cfg.method.ema_momentum = default_momentum(total)
    if env.is_primary:
        cfg.save(out / "config.json")  # resolved: the precision and momentum this run actually uses
    log = MetricsLog(out / "metrics.jsonl", resume_step=step if state is not None else None) if env.is_primary \
        else None
    reporters: list[Reporter] = build_reporters(run.report_to, out, run.wandb_project, cfg.to_dict(),
                                                resume=state is not None) if env.is_primary else []
    if run.eval_every > 0 and on_eval is None and env.is_primary:
        logger.warning("eval_every=%d but no evaluator was given (maskclip_core.trainer.train's on_eval): "
                       "no evaluation while training", run.eval_every)
    masks = MaskSampler(model, run.seed)
    stepper = Stepper(cfg, model, optimizer, env, teacher, forward, scaler)
    global_batch = run.batch_size * env.world_size * k

    def checkpoint() -> None:
        if env.is_primary:
            extras = {k_: v for k_, v in model.state_dict().items() if not k_.startswith("clip.")}
            ckpts.save({
                "step": step, "epoch": stream.epoch, "batch_in_epoch": stream.batch_in_epoch,
                "config": cfg.to_dict(), "clip": model.clip.state_dict(), "extras": extras,
                "teacher": teacher.state_dict() if teacher is not None else None,
                "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "data": {"samples": health.samples, "bad": health.bad},
                "elapsed": {"train_s": train_seconds(time.perf_counter()), "eval_s": prior_eval_s + session_eval_s},
                "nonfinite": {"skipped": skipped, "consecutive": consecutive, "scaler_skipped": scaler_skipped},
            })
        barrier(env)  # no rank runs ahead of a checkpoint it might have to resume from

    # Wall seconds of training (evaluation excluded), carried across resumes so curves against time join up.
    elapsed = state.get("elapsed", {}) if state is not None else {}
    prior_train_s, prior_eval_s = elapsed.get("train_s", 0.0), elapsed.get("eval_s", 0.0)
    session_start, session_eval_s = time.perf_counter(), 0.0

    def train_seconds(now: float) -> float:
        return prior_train_s + (now - session_start) - session_eval_s

    def evaluate(line: dict[str, Any]) -> None:
        """Evaluate on rank 0 (the others wait) and add the metrics and seconds to `line`."""
        nonlocal session_eval_s
        if env.is_primary:
            metrics, seconds = run_eval(on_eval, step, model)
            session_eval_s += seconds
            line.update(metrics, eval_s=seconds)
        barrier(env)

    def write_line(line: dict[str, Any]) -> None:
        if log is not None:
            log.write(line)
        report(reporters, line)

    evaluating = on_eval is not None and run.eval_every > 0
    model.train()
    start_time = time.time()
    with stop_on_sigterm() as stop, contextlib.ExitStack() as closing:  # SIGTERM: finish the step, checkpoint
        for reporter in reporters:
            closing.callback(reporter.close)
        if evaluating and state is None and eval_due(0, total, run.eval_every, fresh_start=True):
            first: dict[str, Any] = {"step": 0, "epoch": 0, "samples_seen": 0, "wall_s": 0.0}
            evaluate(first)
            write_line(first)
        window_start, window_samples, window_data = time.perf_counter(), 0, 0.0
        last: dict[str, Any] = {}
        counters = state.get("nonfinite", {}) if state is not None else {}
        skipped, consecutive = counters.get("skipped", 0), counters.get("consecutive", 0)
        scaler_skipped = counters.get("scaler_skipped", 0)
        while step < total:
            fetch_start = time.perf_counter()
            batch = make_step_batch([next(stream) for _ in range(k)], masks, step, env, total)
            window_data += time.perf_counter() - fetch_start  # waiting for the loader, masks, host-to-device copy
            outcome = stepper(batch, step, total, stop_requested=stop.is_set())
            flags, logged, lr, momentum = outcome.flags, outcome.losses, outcome.lr, outcome.momentum
            health.add(global_batch, int(flags[1]))
            health.check(run.max_bad_fraction)
            if outcome.applied:
                consecutive = 0
            elif not outcome.fault:
                # fp16 overflow: the GradScaler skipped the update and lowered its scale; not a data fault.
                scaler_skipped += 1
            else:
                # Skipped: neither the optimizer nor the teacher moved; the step still counts (the batch is
                # consumed), so the schedule and data position stay those of an uninterrupted run.
                skipped, consecutive = skipped + 1, consecutive + 1
                logger.warning("step %d: non-finite loss or gradient, step skipped", step + 1)
                if consecutive >= run.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{consecutive} consecutive non-finite losses/gradients at step {step + 1}; stopped, the last "
                        f"good checkpoint is {ckpts.last}"
                    )
            step += 1
            window_samples += global_batch
            if on_step is not None and env.is_primary:
                on_step(step, total)
            eval_now = evaluating and eval_due(step, total, run.eval_every)
            if step % run.log_every == 0 or step == total or eval_now:
                # Loss terms averaged over ranks: what one process with the global batch would log.
                names = sorted(logged)
                values = all_reduce_sum(torch.stack([logged[n] for n in names]).double(), env) / env.world_size
                terms = dict(zip(names, values.tolist()))
                now = time.perf_counter()
                last = {
                    "step": step, "epoch": stream.epoch, "samples_seen": step * global_batch,
                    "wall_s": train_seconds(now),
                    "loss": float(sum(model.loss_weights[n] * terms[n] for n in names)),
                    **{key: terms.get(key) for key in LOSS_KEYS},
                    "lr": lr, "logit_scale": float(model.clip.logit_scale.detach().exp()),
                    "ema_momentum": momentum if teacher is not None else None,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                    # Share of the window's wall time spent getting the batch ready (data, masks, copies).
                    "data_wait_fraction": window_data / max(now - window_start, 1e-9),
                    "grad_norm": outcome.grad_norm, "nonfinite_skipped": skipped, "bad_samples": health.bad,
                    "samples_read": health.samples, "scaler_skipped": scaler_skipped if scaler is not None else None,
                    # How far the teacher is from its random start and from the student (relative L2): a teacher
                    # that teaches has left its start (near 1 and more) and trails the student (well below 1).
                    **(teacher.distances(model) if teacher is not None else
                       {"teacher_from_init": None, "teacher_from_student": None}),
                }
                if eval_now:
                    evaluate(last)
                write_line(last)
                if on_log is not None and env.is_primary:
                    on_log(last)
                # The next window starts after any evaluation, so samples_per_s counts training alone.
                window_start, window_samples, window_data = time.perf_counter(), 0, 0.0
            stopping = flags[0] > 0
            if step % run.checkpoint_every == 0 or step == total or stopping:
                checkpoint()
            if stopping:
                return TrainResult(out, step, last, time.time() - start_time, stopped_early=True, skipped_steps=skipped)
        return TrainResult(out, step, last, time.time() - start_time, skipped_steps=skipped)
