"""The training loop shared by `clip` and `maskclip`: set-up (`training_setup`: model, teacher, optimizer; the
data) -> restore (`checkpoint.TrainState` and the objects, on resume) -> the loop, per step: micro-batches + masks
-> `Stepper` (losses dict -> summed loss -> backward -> AdamW -> logit-scale clamp -> EMA update) -> data and fault
bookkeeping in the TrainState -> metrics.jsonl (rank 0) -> checkpoint (rank 0).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointDir, TrainState, restore_objects
from .config import TrainConfig, validate
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed
from .ema import default_momentum
from .errors import NonFiniteLossError
from .loader import BatchStream
from .periodic_eval import EvalHook, eval_due, run_eval
from .precision import PrecisionChoice, resolve_precision
from .reporting import Reporter, build_reporters, report
from .runlog import LOSS_KEYS, MetricsLog
from .step import Stepper, make_step_batch
from .thread_limit import thread_limit
from .towers import image_size_of
from .training_setup import build_train_data, build_training_setup, wrap_forward

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or SIGTERM-stopped) run leaves behind."""

    out_dir: Path
    steps: int
    last_metrics: dict[str, Any]
    wall_time_s: float
    stopped_early: bool = False
    skipped_steps: int = 0


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
    with thread_limit(cfg.run.threads):
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


class _Clock:
    """Training seconds, evaluation excluded, accumulated in the run's state (so they carry over resumes)."""

    def __init__(self, state: TrainState) -> None:
        self.state, self.mark = state, time.perf_counter()

    def training_seconds(self) -> float:
        """`state.train_s` brought up to now."""
        now = time.perf_counter()
        self.state.train_s += now - self.mark
        self.mark = now
        return self.state.train_s

    def exclude(self, seconds: float) -> None:
        """An evaluation of `seconds` just ran: count it as evaluation, not training."""
        self.state.eval_s += seconds
        self.mark += seconds


def _train(cfg: TrainConfig, env: DistEnv, resume: bool, on_log: Callable[[dict[str, Any]], None] | None,
           on_step: Callable[[int, int], None] | None, on_eval: EvalHook | None) -> TrainResult:
    run, k = cfg.run, cfg.run.accum_freq
    out = Path(run.out)
    ckpts = CheckpointDir(out / "checkpoints", run.keep_checkpoints)
    ckpt = None
    if resume:  # every rank reads the same newest good checkpoint
        ckpt, ckpt_path = ckpts.load_latest()
        logger.info("resuming from %s (step %d)", ckpt_path, ckpt["step"])
    if env.is_primary:
        ckpts.clean_temporaries()
        out.mkdir(parents=True, exist_ok=True)

    # Set-up: the step's objects, the data.
    setup = build_training_setup(cfg, env)
    model, teacher, optimizer, scaler = setup.model, setup.teacher, setup.optimizer, setup.scaler
    dataset = build_train_data(cfg, setup.tokenizer, image_size_of(model.clip))
    # Restore: weights, optimizer, random streams and counters of the newest good checkpoint.
    state = TrainState()
    if ckpt is not None:
        restore_objects(ckpt, ckpt_path, model, teacher, optimizer, scaler)
        state = TrainState.from_checkpoint(ckpt)
    forward = wrap_forward(model, cfg, env)
    stream = BatchStream(dataset, run.batch_size, run.seed, cfg.data.workers, state.epoch, state.batch_in_epoch,
                         rank=env.rank, world_size=env.world_size, low_priority_workers=env.device.type == "cpu")
    total = resolve_total_steps(cfg, stream)
    if cfg.method.ema_momentum is None:  # "auto": run-length aware (ema.default_momentum)
        cfg.method.ema_momentum = default_momentum(total)
    if env.is_primary:
        cfg.save(out / "config.json")  # resolved: the precision and momentum this run actually uses
    log = MetricsLog(out / "metrics.jsonl", resume_step=state.step if ckpt is not None else None) \
        if env.is_primary else None
    reporters: list[Reporter] = build_reporters(run.report_to, out, run.wandb_project, cfg.to_dict(),
                                                resume=ckpt is not None) if env.is_primary else []
    if run.eval_every > 0 and on_eval is None and env.is_primary:
        logger.warning("eval_every=%d but no evaluator was given (maskclip_core.trainer.train's on_eval): "
                       "no evaluation while training", run.eval_every)
    stepper = Stepper(cfg, model, optimizer, env, teacher, forward, scaler)
    global_batch = run.batch_size * env.world_size * k
    clock = _Clock(state)

    def checkpoint() -> None:
        if env.is_primary:
            clock.training_seconds()
            state.epoch, state.batch_in_epoch = stream.epoch, stream.batch_in_epoch  # the stream owns its position
            ckpts.save(state.to_checkpoint(cfg.to_dict(), model, teacher, optimizer, scaler))
        barrier(env)  # no rank runs ahead of a checkpoint it might have to resume from

    def evaluate(line: dict[str, Any]) -> None:
        """Evaluate on rank 0 (the others wait) and add the metrics and seconds to `line`."""
        if env.is_primary:
            metrics, seconds = run_eval(on_eval, state.step, model)
            clock.exclude(seconds)
            line.update(metrics, eval_s=seconds)
        barrier(env)

    def write_line(line: dict[str, Any]) -> None:
        if log is not None:
            log.write(line)
        report(reporters, line)

    # The loop.
    evaluating = on_eval is not None and run.eval_every > 0
    model.train()
    start_time = time.time()
    with stop_on_sigterm() as stop, contextlib.ExitStack() as closing:  # SIGTERM: finish the step, checkpoint
        for reporter in reporters:
            closing.callback(reporter.close)
        if evaluating and ckpt is None and eval_due(0, total, run.eval_every, fresh_start=True):
            first: dict[str, Any] = {"step": 0, "epoch": 0, "samples_seen": 0, "wall_s": 0.0}
            evaluate(first)
            write_line(first)
        window_start, window_samples, window_data = time.perf_counter(), 0, 0.0
        last: dict[str, Any] = {}
        while state.step < total:
            step = state.step
            fetch_start = time.perf_counter()
            batch = make_step_batch([next(stream) for _ in range(k)], setup.masks, step, env, total)
            window_data += time.perf_counter() - fetch_start  # waiting for the loader, masks, host-to-device copy
            outcome = stepper(batch, step, total, stop_requested=stop.is_set())
            flags, logged, lr, momentum = outcome.flags, outcome.losses, outcome.lr, outcome.momentum
            state.count_batch(global_batch, int(flags[1]))
            state.check_bad_fraction(run.max_bad_fraction)
            if outcome.applied:
                state.consecutive = 0
            elif not outcome.fault:
                # fp16 overflow: the GradScaler skipped the update and lowered its scale; not a data fault.
                state.scaler_skipped += 1
            else:
                # Skipped: neither the optimizer nor the teacher moved; the step still counts (the batch is
                # consumed), so the schedule and data position stay those of an uninterrupted run.
                state.skipped, state.consecutive = state.skipped + 1, state.consecutive + 1
                logger.warning("step %d: non-finite loss or gradient, step skipped", step + 1)
                if state.consecutive >= run.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{state.consecutive} consecutive non-finite losses/gradients at step {step + 1}; stopped, "
                        f"the last good checkpoint is {ckpts.last}"
                    )
            state.step = step = step + 1
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
                    "wall_s": clock.training_seconds(),
                    "loss": float(sum(model.loss_weights[n] * terms[n] for n in names)),
                    **{key: terms.get(key) for key in LOSS_KEYS},
                    "lr": lr, "logit_scale": float(model.clip.logit_scale.detach().exp()),
                    "ema_momentum": momentum if teacher is not None else None,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                    # Share of the window's wall time spent getting the batch ready (data, masks, copies).
                    "data_wait_fraction": window_data / max(now - window_start, 1e-9),
                    "grad_norm": outcome.grad_norm, "nonfinite_skipped": state.skipped, "bad_samples": state.bad,
                    "samples_read": state.samples,
                    "scaler_skipped": state.scaler_skipped if scaler is not None else None,
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
                return TrainResult(out, step, last, time.time() - start_time, stopped_early=True,
                                   skipped_steps=state.skipped)
        return TrainResult(out, state.step, last, time.time() - start_time, skipped_steps=state.skipped)
