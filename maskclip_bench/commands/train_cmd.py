"""`maskclip-bench train`: build a TrainConfig from file + flags + `--set`, then call maskclip_core.trainer.train."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskclip_bench.commands.options import (QUIET, SET, TRAIN_BATCH, TRAIN_DATA, TRAIN_MODEL, TRAIN_STEPS,
                                             allow_pipe_option)
from maskclip_bench.commands.run_config import (announce_precision, build_config, check_model_and_data,
                                                trust_typed_data_spec)


def train_command(
    method: Optional[str] = typer.Option(None, help="clip or maskclip"),
    model: Optional[str] = TRAIN_MODEL,
    data: Optional[str] = TRAIN_DATA,
    steps: Optional[int] = TRAIN_STEPS,
    epochs: Optional[float] = typer.Option(None, help="epochs (overrides --steps for data with a length)"),
    batch_size: Optional[int] = TRAIN_BATCH,
    lr: Optional[float] = typer.Option(None),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio"),
    decoder_depth: Optional[int] = typer.Option(None, "--decoder-depth"),
    precision: Optional[str] = typer.Option(None, help="auto (default: bf16 autocast where the device runs it "
                                            "natively, else fp32 on CPU, fp16 + GradScaler on GPUs without bf16) "
                                            "| fp32 | bf16 = amp_bf16 (bf16 autocast) | amp (fp16 autocast + "
                                            "GradScaler)"),
    accum_freq: Optional[int] = typer.Option(None, "--accum-freq", help="micro-batches per optimizer step "
                                             "(contrastive loss over all of them, as open_clip)"),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    torchcompile: Optional[bool] = typer.Option(None, "--torchcompile/--no-torchcompile"),
    local_loss: Optional[bool] = typer.Option(None, "--local-loss/--no-local-loss",
                                              help="contrastive loss over local rows only (open_clip)"),
    gather_with_grad: Optional[bool] = typer.Option(None, "--gather-with-grad/--no-gather-with-grad",
                                                    help="all-gather features with gradient (open_clip)"),
    dataset_resampled: Optional[bool] = typer.Option(None, "--dataset-resampled/--no-dataset-resampled",
                                                     help="webdataset: draw shards with replacement"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    seed: Optional[int] = typer.Option(None),
    out: Optional[str] = typer.Option(None, help="run folder (config.json, metrics.jsonl, checkpoints/)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest good checkpoint in OUT/checkpoints"),
    max_bad_fraction: Optional[float] = typer.Option(None, "--max-bad-fraction", help="stop when more than this "
                                                     "fraction of the samples read was unreadable (default 0.01)"),
    max_nonfinite: Optional[int] = typer.Option(None, "--max-nonfinite", help="consecutive non-finite steps "
                                                "(skipped) before the run stops (default 5)"),
    keep_checkpoints: Optional[int] = typer.Option(None, "--keep-checkpoints", help="step_*.pt files kept "
                                                   "(default 3)"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate the student every N steps (and "
                                             "at steps 0 and last) into OUT/evals and metrics.jsonl; 0: never"),
    eval_suite: Optional[str] = typer.Option(None, "--eval-suite", help="suite of --eval-every: quick | shapes | "
                                             "full (default quick)"),
    eval_shapes: Optional[str] = typer.Option(None, "--eval-shapes", help="options of --eval-suite's shapes tasks, "
                                              "e.g. test=300,train=600 (cheaper evaluations)"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="also log scalars to tensorboard, wandb "
                                            "(offline unless WANDB_MODE is set) or tensorboard,wandb"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML or JSON config file"),
    allow_pipe: bool = allow_pipe_option("--config"),
    set_: list[str] = SET,
    quiet: bool = QUIET,
) -> None:
    """Train CLIP or MaskCLIP (same code, same data) and write config.json, metrics.jsonl and checkpoints."""
    flags = {
        "method.name": method, "model.name": model, "data.spec": data, "run.steps": steps, "run.epochs": epochs,
        "run.batch_size": batch_size, "optim.lr": lr, "method.mask_ratio": mask_ratio,
        "method.decoder_depth": decoder_depth, "run.precision": precision, "run.seed": seed, "run.out": out,
        "run.max_bad_fraction": max_bad_fraction, "run.max_nonfinite": max_nonfinite,
        "run.keep_checkpoints": keep_checkpoints, "run.accum_freq": accum_freq,
        "run.grad_checkpointing": grad_checkpointing, "run.torchcompile": torchcompile,
        "method.local_loss": local_loss, "method.gather_with_grad": gather_with_grad,
        "data.resampled": dataset_resampled, "run.device": device, "run.eval_every": eval_every,
        "run.eval_suite": eval_suite, "run.eval_shapes": eval_shapes, "run.report_to": report_to,
    }
    explicit_config = config
    if resume and config is None and out and (Path(out) / "config.json").is_file():
        config = Path(out) / "config.json"  # resume continues the saved run unless flags change it
    cfg = build_config(config, set_, flags)
    if config is not None and explicit_config is None and model is None:
        from maskclip_bench.evaluation.model_loading import check_builtin_model

        check_builtin_model(cfg.model.name, f"{config}")  # a saved run folder never sends training to the network
    trust_typed_data_spec(cfg, flags, set_, allow_pipe and explicit_config is not None)
    check_model_and_data(cfg)
    announce_precision(cfg)

    from maskclip_bench.commands.progress import TrainProgress
    from maskclip_bench.evaluation.hook import make_eval_hook
    from maskclip_core.trainer import train

    on_eval = make_eval_hook(cfg) if cfg.run.eval_every > 0 else None  # a bad suite name fails before training
    with TrainProgress(enabled=not quiet, title=f"{cfg.method.name} · {cfg.model.name}") as progress:
        result = train(cfg, resume=resume, on_log=progress.on_log, on_step=progress.on_step, on_eval=on_eval)
    m = result.last_metrics
    typer.echo(
        f"done: {result.steps} steps in {result.wall_time_s:.0f}s, loss {m.get('loss', float('nan')):.4f}; "
        f"run folder {result.out_dir}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
