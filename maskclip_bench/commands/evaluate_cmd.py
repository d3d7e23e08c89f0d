"""Evaluation commands: `zeroshot`, `retrieval`, `linprobe`, `finetune`, `dense` and the suite runner `eval`.

Each takes `--ckpt` (a trainer checkpoint, a plain open_clip checkpoint with `--model`,
`local-dir:DIR`, or `scratch:MODEL`) and a `--dataset` spec, prints a rich table and writes one JSON record per
(checkpoint, dataset, task) into `--results-dir`. Image features go through the on-disk feature cache
(`--cache-dir`, `--no-cache`). Heavy modules (torch, open_clip, the evaluators) are imported inside the
commands so `maskclip-bench --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from maskclip_bench.commands.options import (BATCH, CACHE_DIR, CKPT, DATA_SEED, DATASET, DEVICE, FLICKR_SPLIT, MODEL,
                                             NO_CACHE, QUIET, RESULTS, SEED, TEMPLATES, THREADS, WORKERS)

if TYPE_CHECKING:  # pragma: no cover
    from maskclip_bench.evaluation.api import Evaluation
    from maskclip_bench.evaluation.session import EvalSession
    from maskclip_bench.evaluation.suites import PlannedTask
    from maskclip_bench.evaluation.tasks import TaskResult


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def print_results(results: list["TaskResult"], records: list[Path], results_dir: str) -> None:
    """A rich table of the results, then where the records went."""
    from rich.markup import escape
    from rich.table import Table

    from maskclip_bench.commands.console import command_console

    table = Table(title="evaluation results", show_lines=True)
    for column in ("task", "dataset", "metric", "value", "samples", "cache", "time"):
        justify = "right" if column in ("value", "samples", "time") else "left"
        table.add_column(column, overflow="fold", justify=justify)
    for r in results:
        task = r.task + (f" [{r.variant}]" if r.variant else "")
        samples = str(r.num_samples) + (f" ({r.bad_samples} bad)" if r.bad_samples else "")
        # One metric per line inside the row keeps the table narrow enough for a terminal.
        cells = (task, r.dataset, "\n".join(r.metrics), "\n".join(_fmt(v) for v in r.metrics.values()),
                 samples, r.feature_cache or "-", f"{r.wall_time_s:.1f}s")
        table.add_row(*(escape(c) for c in cells))  # "[features=post]" is text, not rich markup
    console = command_console()
    console.print(table)
    console.print(f"wrote {len(records)} record(s) to {results_dir}")


# The options `execute` takes from every command (see `_common`).
COMMON = ("ckpt", "model", "batch_size", "results_dir", "seed", "workers", "device", "cache_dir", "no_cache",
          "data_seed", "quiet", "threads")


def _common(values: dict[str, Any]) -> dict[str, Any]:
    """The shared options out of a command's arguments (its `locals()`)."""
    return {key: values[key] for key in COMMON}


def execute(
    plan: Callable[["EvalSession"], list["PlannedTask"]],
    *,
    specs: tuple[str, ...],
    ckpt: str,
    model: Optional[str],
    batch_size: int,
    results_dir: str,
    seed: int,
    workers: int,
    device: str,
    cache_dir: Optional[Path],
    no_cache: bool,
    data_seed: int,
    quiet: bool,
    threads: int,
    show: bool = True,
) -> "Evaluation":
    """The flags as EvalSettings -> `maskclip_bench.evaluation.api.evaluate` (progress lines on stderr unless
    `quiet`) -> the results table; returns what `evaluate` did."""
    from rich.markup import escape

    from maskclip_bench.commands.console import command_console
    from maskclip_bench.evaluation.api import EvalSettings, evaluate

    err = command_console(stderr=True)
    log = None if quiet else (lambda message: err.print(f"[dim]{escape(message)}[/dim]"))
    settings = EvalSettings(batch_size=batch_size, seed=seed, workers=workers, device=device, cache_dir=cache_dir,
                            no_cache=no_cache, data_seed=data_seed, threads=threads)
    done = evaluate(ckpt, plan, settings, results_dir, model_name=model, specs=specs, log=log)
    if show:
        print_results(done.results, done.records, results_dir)
    return done


def _single(task: str, dataset: str, templates: Optional[str] = None,
            **options: Any) -> Callable[["EvalSession"], list["PlannedTask"]]:
    """A planner for one task on every dataset of a spec that fits the task."""

    def plan(session: "EvalSession") -> list["PlannedTask"]:
        from maskclip_bench.evaluation.suites import PlannedTask
        from maskclip_bench.evaluation.tasks import DATASET_TASK, FINETUNE, LINEAR_PROBE, fits
        from maskclip_core.errors import DataError

        built = session.build(dataset, templates=templates)
        fitting = [ds for ds in built if fits(ds, task)]
        if not fitting:
            what = ", ".join(sorted({f"{ds.name} ({ds.task})" for ds in built}))
            raise DataError(f"{task} needs a {DATASET_TASK[task]} dataset; '{dataset}' gives {what}")
        if task in (LINEAR_PROBE, FINETUNE) and len(fitting) > 1:
            # A multi-task spec (bare `shapes`): probe the tasks that have a train split, skip the others.
            fitting = [ds for ds in fitting if "train" in ds.splits] or fitting[:1]
        extra = {"templates": templates} if task == "zeroshot_classification" else {}
        return [PlannedTask(task, ds, {**extra, **options}) for ds in fitting]

    return plan


def zeroshot_command(
    ckpt: str = CKPT, dataset: str = DATASET, model: Optional[str] = MODEL, templates: Optional[str] = TEMPLATES,
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE, cache_dir: Optional[Path] = CACHE_DIR, no_cache: bool = NO_CACHE,
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Zero-shot classification (acc1, acc5, mean_per_class_recall as CLIP_benchmark computes them; f1_macro)."""
    execute(_single("zeroshot_classification", dataset, templates), specs=(dataset,), **_common(locals()))


def retrieval_command(
    ckpt: str = CKPT, dataset: str = DATASET, model: Optional[str] = MODEL,
    recall_k: list[int] = typer.Option([1, 5, 10], "--recall-k", help="k of recall@k (repeatable)"),
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE, cache_dir: Optional[Path] = CACHE_DIR, no_cache: bool = NO_CACHE,
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Image-text retrieval (image_retrieval_recall@k, text_retrieval_recall@k), as CLIP_benchmark computes it."""
    execute(_single("zeroshot_retrieval", dataset, recall_k=tuple(recall_k)), specs=(dataset,), **_common(locals()))


def linprobe_command(
    ckpt: str = CKPT, dataset: str = DATASET, model: Optional[str] = MODEL,
    features: str = typer.Option("pre", "--features", help="pre: pooled features before the projection "
                                 "(CLIP's protocol for ViTs); post: the normalised projected embedding"),
    solver: str = typer.Option("auto", "--solver", help="sklearn (exact, CPU) | torch (full-batch L-BFGS on "
                               "--device, for ImageNet-size feature sets) | auto (torch from 50M feature values)"),
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE, cache_dir: Optional[Path] = CACHE_DIR, no_cache: bool = NO_CACHE,
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Linear probe (logistic regression, C picked on val) on frozen features: lp_acc1, lp_acc5, ..."""
    if features not in ("pre", "post"):
        raise typer.BadParameter("must be 'pre' or 'post'", param_hint="--features")
    execute(_single("linear_probe", dataset, features=features, solver=solver), specs=(dataset,),
            **_common(locals()))


def finetune_command(
    ckpt: str = CKPT, dataset: str = DATASET, model: Optional[str] = MODEL,
    epochs: int = typer.Option(2, "--epochs"), lr: float = typer.Option(1e-3, "--lr"),
    layer_decay: float = typer.Option(0.65, "--layer-decay", help="learning-rate decay per block from the head "
                                      "down (BEiT/MAE); 1 trains every layer at --lr (from scratch:MODEL)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="linear warm-up steps (default: a tenth of all "
                                         "steps), then cosine to 0"),
    head_init_std: float = typer.Option(2e-5, "--head-init-std", help="the head's initial weight scale: MAE's "
                                        "2e-5 for pretrained towers; about 0.05 from scratch:MODEL, where 2e-5 "
                                        "stalls training"),
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="accepted like elsewhere; unused"),
    no_cache: bool = typer.Option(False, "--no-cache", help="accepted like elsewhere; unused"),
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Fine-tune the image tower with a linear head on the train split (ft_acc1, ft_acc5)."""
    # Fine-tuning trains on images, so there are no features to cache.
    options = {**_common(locals()), "cache_dir": None, "no_cache": True}
    from maskclip_core.errors import ConfigError

    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"--layer-decay must be in (0, 1], got {layer_decay}")
    if warmup is not None and warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")
    if not head_init_std > 0.0:
        raise ConfigError(f"--head-init-std must be > 0, got {head_init_std}")
    execute(_single("finetune", dataset, epochs=epochs, lr=lr, layer_decay=layer_decay, warmup_steps=warmup,
                    head_init_std=head_init_std), specs=(dataset,), **options)


def dense_command(
    ckpt: str = CKPT, dataset: str = DATASET, model: Optional[str] = MODEL,
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE, cache_dir: Optional[Path] = CACHE_DIR, no_cache: bool = NO_CACHE,
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Dense linear probe on frozen patch tokens (miou, pixel_acc)."""
    execute(_single("dense_probe", dataset, epochs=epochs), specs=(dataset,), **_common(locals()))


def eval_command(
    ckpt: list[str] = typer.Option(..., "--ckpt", help="checkpoint as for the other commands; repeat it to "
                                   "evaluate several, one after the other (features are never shared between them), "
                                   "or give @FILE: a file listing them, one a line (# comments)"),
    suite: Optional[str] = typer.Option(None, "--suite", help="quick | shapes | full (quick when no --dataset), or a "
                                        "standard suite over --dataset-root: datacomp | vtab | vtab+ | "
                                        "imagenet_robustness | retrieval | compositional"),
    dataset: list[str] = typer.Option([], "--dataset", help="extra dataset (repeatable); a bare shapes:OPTIONS "
                                      "sets the options of the suite's shapes tasks"),
    dataset_root: Optional[Path] = typer.Option(None, "--dataset-root", help="standard suites: folder holding "
                                                "CLIP_benchmark's wds_<name> (or DataComp's wds_<name>_test) copies, "
                                                "nlphuji_flickr30k/ for --flickr-split full, and sugar_crepe/ and "
                                                "winoground/ for compositional"),
    redo: bool = typer.Option(False, "--redo", help="standard suites: evaluate tasks that already have a record "
                              "for this checkpoint again"),
    flickr_split: str = FLICKR_SPLIT,
    model: Optional[str] = MODEL, templates: Optional[str] = TEMPLATES,
    batch_size: int = BATCH, results_dir: str = RESULTS, seed: int = SEED, workers: int = WORKERS,
    device: str = DEVICE, cache_dir: Optional[Path] = CACHE_DIR, no_cache: bool = NO_CACHE,
    data_seed: int = DATA_SEED, quiet: bool = QUIET, threads: int = THREADS,
) -> None:
    """Run a suite of evaluations on one checkpoint, encoding each image set once (see maskclip_bench.evaluation.suites
    and, for the standard suites over real datasets, maskclip_bench.evaluation.standard_suites)."""
    from maskclip_bench.evaluation.standard_suites import KARPATHY, STANDARD_SUITES
    from maskclip_core.errors import DataError

    checkpoints, common = checkpoint_list(ckpt), _common(locals())
    if suite in STANDARD_SUITES:
        for one in checkpoints:
            _standard_suite(suite, dataset_root, redo, dataset, flickr_split, {**common, "ckpt": one})
        return
    if flickr_split != KARPATHY:
        raise DataError(f"--flickr-split is for the standard suites with Flickr30K (datacomp, retrieval), not "
                        f"--suite {suite or 'quick'}")
    chosen = suite if suite or dataset else "quick"
    if chosen is not None:
        from maskclip_bench.evaluation.suites import SUITES

        if chosen not in SUITES:
            raise DataError(f"unknown suite '{chosen}' (choose {', '.join([*SUITES, *STANDARD_SUITES])})")

    def plan(session: "EvalSession") -> list["PlannedTask"]:
        from maskclip_bench.evaluation.suites import plan_suite

        return plan_suite(session, chosen, dataset, templates=templates)

    for one in checkpoints:
        execute(plan, specs=tuple(dataset), **{**common, "ckpt": one})


def checkpoint_list(values: list[str]) -> list[str]:
    """The checkpoints of repeated ``--ckpt`` values, an ``@FILE`` value standing for the lines of FILE (blank lines
    and ``#`` comments skipped; paths as written, relative to the current folder). DataError for a missing or empty
    list file."""
    from maskclip_core.errors import DataError

    out: list[str] = []
    for value in values:
        if not value.startswith("@"):
            out.append(value)
            continue
        path = Path(value[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the checkpoint list {path}: {exc.__class__.__name__}") from None
        listed = [line.split("#", 1)[0].strip() for line in lines]
        listed = [line for line in listed if line]
        if not listed:
            raise DataError(f"the checkpoint list {path} names no checkpoint")
        out.extend(listed)
    return out


def _standard_suite(name: str, root: Optional[Path], redo: bool, extra: list[str], flickr_split: str,
                    common: dict[str, Any]) -> None:
    """A standard suite: the missing and unsupported datasets listed up front, the found ones evaluated (skipping
    those with a record for this checkpoint), then the averages, each marked partial with its task count.

    These are plain lines (typer.echo), never wrapped, so a fetch command can be copied whole."""
    import pandas as pd

    from maskclip_bench.evaluation import standard_eval
    from maskclip_bench.evaluation.standard_suites import flickr_note, locate, suite_groups, suite_tasks
    from maskclip_bench.evaluation.records import load_records, records_frame
    from maskclip_bench.results.suite_table import suite_rows
    from maskclip_core.errors import DataError

    if root is None:
        raise DataError(f"--suite {name} reads real datasets: give --dataset-root DIR")
    if extra:
        raise DataError(f"--suite {name} takes its datasets from --dataset-root, not --dataset")
    tasks = suite_tasks(name, flickr_split)
    layout = locate(tasks, root)
    for task in layout.unsupported:
        typer.echo(f"not supported: {task.title} ({task.key}, main metric {task.metric}): {task.reason}", err=True)
    if layout.missing:
        typer.echo(f"missing under {root} ({len(layout.missing)} of {len(tasks)}); to get them:", err=True)
        for task in layout.missing:
            typer.echo(f"  {task.title}: {task.fetch_hint().replace('ROOT', str(root))}", err=True)
    if not layout.found:
        typer.echo(f"{name}: nothing to evaluate (none of its datasets was found under {root})")
        return
    skipped: list[Any] = []
    unscored: list[Any] = []
    # Read once: the planner skips the finished tasks, and the scores are these plus the records written now.
    records = load_records(common["results_dir"])
    done = execute(standard_eval.plan_standard(layout, records, redo, skipped, unscored), specs=(), **common)
    for task, why in dict.fromkeys(unscored):  # once, however many checkpoints
        typer.echo(f"not scored: {task.title} (main metric {task.metric}): {why}", err=True)
    if skipped:
        typer.echo(f"{len(skipped)} task(s) had a record for this checkpoint and were not rerun (--redo reruns "
                   f"them): {', '.join(t.title for t in skipped)}", err=True)
    if done.record_rows:
        fresh = records_frame(done.record_rows)
        records = fresh if records.empty else pd.concat([records, fresh], ignore_index=True)
    rows = [r for r in suite_rows(records, tasks, suite_groups(name))
            if r["checkpoint_hash"] == done.loaded.content_hash]
    if not rows:
        typer.echo(f"{name}: no task of this checkpoint has a score")
        return
    for label, average in rows[0]["averages"].items():
        typer.echo(f"{name} {label}: {average.label()}")
    note = flickr_note(tasks)
    if note:
        typer.echo(note)


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the CLI."""
    app.command("zeroshot")(zeroshot_command)
    app.command("retrieval")(retrieval_command)
    app.command("linprobe")(linprobe_command)
    app.command("finetune")(finetune_command)
    app.command("dense")(dense_command)
    app.command("eval")(eval_command)
