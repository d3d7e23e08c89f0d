"""`maskclip-bench demo`: the main job on the built-in data, end to end, in a few minutes on a laptop CPU.

Trains `clip` and `maskclip` with the same code, data, seed and budget, evaluates both with the `quick` suite
(zero-shot, retrieval, linear probe on `shapes`), and ends with a side-by-side table.
"""
from __future__ import annotations

import time
from pathlib import Path

import typer


def demo_command(
    steps: int = typer.Option(150, help="optimizer steps per method"),
    # 32, not 64: the demo then stays under 10 minutes on a 2-core CPU without native bf16 (fp32), see README
    batch_size: int = typer.Option(32, "--batch-size"),
    model: str = typer.Option("MaskCLIP-Tiny-8", "--model", help="model config (maskclip-bench's or open_clip's)"),
    out: Path = typer.Option(Path("runs/demo"), help="folder for both runs, their records and the table"),
    suite: str = typer.Option("quick", help="evaluation suite (see `maskclip-bench eval --help`)"),
    precision: str = typer.Option("auto", help="auto (bf16 autocast where the CPU runs bf16 natively, else fp32) "
                                  "| fp32 | bf16"),
    seed: int = typer.Option(0),
    shapes: str = typer.Option("", "--shapes", help="options of the suite's shapes tasks, e.g. "
                                                    "test=200,train=400,val=100 (default: the suite's sizes)"),
) -> None:
    """Train clip and maskclip on `shapes`, evaluate both, print the comparison."""
    import torch
    from rich.table import Table

    from maskclip_bench.commands.console import command_console
    from maskclip_bench.commands.progress import TrainProgress
    from maskclip_bench.commands.run_config import announce_precision
    from maskclip_bench.evaluation.api import EvalSettings, evaluate_quietly
    from maskclip_bench.evaluation.suites import plan_suite
    from maskclip_bench.results.significance import difference_se
    from maskclip_core.config import TrainConfig, validate
    from maskclip_core.trainer import train

    threads = torch.get_num_threads()
    console = command_console()
    start = time.time()
    results = {}
    resolved = TrainConfig()
    resolved.run.precision = precision
    announce_precision(resolved)  # resolved and printed once, the same for both methods
    precision = resolved.run.precision
    for method in ("clip", "maskclip"):
        cfg = TrainConfig()
        cfg.method.name, cfg.model.name = method, model
        cfg.run.steps, cfg.run.batch_size, cfg.run.seed = steps, batch_size, seed
        cfg.run.precision, cfg.run.out = precision, str(out / method)
        cfg.optim.lr, cfg.optim.warmup = 1e-3, max(1, steps // 10)
        validate(cfg)
        with TrainProgress(title=method) as progress:
            run = train(cfg, on_log=progress.on_log, on_step=progress.on_step)
        console.print(f"[bold]{method}[/bold]: {run.steps} steps in {run.wall_time_s:.0f}s")
        results[method] = evaluate_quietly(
            str(out / method / "checkpoints" / "last.pt"),
            lambda session: plan_suite(session, suite, [f"shapes:{shapes}"] if shapes else [], templates=None),
            # One torch thread + one rendering worker: on 2 cores, 2 threads spin against sklearn's BLAS.
            EvalSettings(batch_size=250, seed=seed, workers=1, no_cache=True, threads=1), out / "records")
        torch.set_num_threads(threads)

    table = Table(title=f"clip vs maskclip on shapes ({model}, {steps} steps, batch {batch_size}, seed {seed})")
    table.add_column("dataset / metric")
    for col in ("clip", "maskclip", "maskclip - clip", "2 s.e."):
        table.add_column(col, justify="right")
    maskclip_by_key = {(r.task, r.dataset): r for r in results["maskclip"]}
    beyond_noise = []
    for r in results["clip"]:
        other = maskclip_by_key.get((r.task, r.dataset))
        for metric, value in r.metrics.items():
            if (not isinstance(value, (int, float)) or metric.endswith("_C") or other is None
                    or metric not in other.metrics):
                continue
            name, diff = f"{r.dataset.split(':')[0]} {metric}", other.metrics[metric] - value
            # Per-class recall is no fraction of the n samples: no binomial error for it.
            noise = None if "mean_per_class" in metric else 2 * difference_se(value, other.metrics[metric],
                                                                               r.num_samples)
            if noise is not None and abs(diff) > noise:
                beyond_noise.append(f"{name} ({100 * diff:+.1f})")
            table.add_row(name, f"{100 * value:.1f}", f"{100 * other.metrics[metric]:.1f}", f"{100 * diff:+.1f}",
                          "-" if noise is None else f"{100 * noise:.1f}")
    console.print(table)
    # Item 7 of the benchmark issue: the table says whether the methods differ at this budget at all.
    if beyond_noise:
        console.print("differ by more than 2 standard errors (binomial, unpaired; one seed): " + ", ".join(beyond_noise))
    else:
        console.print("at this budget the two methods do not differ by more than 2 standard errors on any metric "
                      "(binomial, unpaired; one seed)")
    console.print(f"numbers in percent; total time {time.time() - start:.0f}s; runs and records in {out}/")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
