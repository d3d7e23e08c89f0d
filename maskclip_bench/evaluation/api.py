"""Evaluate one checkpoint: the library call below every evaluation command, `ablate`, `check` and `demo`.

`evaluate(ckpt, plan, settings)` loads the checkpoint, opens an `EvalSession`, runs the planned tasks (sharing
features), writes one record per task as it finishes and returns the results. It never prints: the commands in
`maskclip_bench.commands` turn flags into `EvalSettings` and show the results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from maskclip_bench.eval_data.shapes_tasks import parse_shapes_spec
from maskclip_bench.eval_data.spec import split_kind
from maskclip_bench.evaluation.feature_cache import FeatureCache
from maskclip_bench.evaluation.model_loading import LoadedModel, load_model
from maskclip_bench.evaluation.records import write_record
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.suites import PlannedTask, run_suite
from maskclip_bench.evaluation.tasks import TaskResult, result_record
from maskclip_core.precision import exact_fp32
from maskclip_core.thread_limit import thread_limit

Planner = Callable[[EvalSession], list[PlannedTask]]


@dataclass
class EvalSettings:
    """How a checkpoint is evaluated: what every evaluation command shares."""

    batch_size: int = 64
    seed: int = 0  # probe initialisation, splits, shuffling
    workers: int = 0  # DataLoader worker processes
    device: str = "cpu"
    cache_dir: Path | None = None  # feature cache folder (None: ~/.cache/maskclip-bench)
    no_cache: bool = False
    data_seed: int = 0  # seed of the built-in shapes data (fixes its test set)
    threads: int = 0  # torch and BLAS threads (0: leave the defaults)


@dataclass
class Evaluation:
    """What `evaluate` did: the results in plan order, the records written (their files, and their contents with
    `record_file` as `load_records` rows), the checkpoint evaluated."""

    results: list[TaskResult]
    records: list[Path]
    loaded: LoadedModel
    record_rows: list[dict[str, Any]]


def check_specs(specs: Sequence[str]) -> None:
    """Parse dataset specs (kind, shapes task and options) without building anything; DataError if bad."""
    for spec in specs:
        kind, rest = split_kind(spec)
        if kind == "shapes":
            parse_shapes_spec(rest)


def evaluate(ckpt: str, plan: Planner, settings: EvalSettings, results_dir: str | os.PathLike[str], *,
             model_name: str | None = None, specs: Sequence[str] = (),
             log: Callable[[str], None] | None = None,
             on_result: Callable[[TaskResult], None] | None = None) -> Evaluation:
    """Check `specs`, load `ckpt`, plan, run (sharing features) and write a record per result into `results_dir`.

    `log` receives progress lines (None: silent); `on_result` sees each result as its record is written.
    """
    check_specs(specs)  # a typo in a spec fails before the checkpoint is loaded
    log = log or (lambda message: None)
    loaded = load_model(ckpt, model_name)
    session = EvalSession(loaded, batch_size=settings.batch_size, workers=settings.workers, seed=settings.seed,
                          data_seed=settings.data_seed, device=settings.device,
                          cache=FeatureCache(settings.cache_dir, enabled=not settings.no_cache), log=log)
    planned = plan(session)
    # Logged only once planning worked, so a user error stays the one line on stderr.
    log(f"checkpoint {loaded.ckpt_path} ({loaded.kind}, {loaded.model_name}, sha256 {loaded.content_hash[:12]}); "
        f"{len(planned)} evaluation(s)")
    written: list[Path] = []
    rows: list[dict[str, Any]] = []

    def save(result: TaskResult) -> None:
        # Written as each task finishes, so a later failure keeps the earlier results.
        record = result_record(result, session)
        written.append(write_record(record, results_dir))
        rows.append({**record, "record_file": str(written[-1])})
        log(f"{result.task} on {result.dataset}: done in {result.wall_time_s:.1f}s")
        if on_result is not None:
            on_result(result)

    with thread_limit(settings.threads, blas=True), exact_fp32(session.device):
        results = run_suite(session, planned, on_result=save)
    return Evaluation(results, written, loaded, rows)


def evaluate_quietly(ckpt: str, plan: Planner, settings: EvalSettings, results_dir: str | os.PathLike[str],
                     specs: Sequence[str] = ()) -> list[TaskResult]:
    """`evaluate` without progress lines: what `ablate`, `check` and `demo` run on the checkpoints they train
    (their commands also turn CLIP_benchmark's tqdm bars off, see `maskclip_bench.cli.quiet_progress`)."""
    return evaluate(ckpt, plan, settings, results_dir, specs=specs).results


def metric_values(results: Sequence[TaskResult], name: Callable[[TaskResult, str], str]) -> dict[str, float]:
    """{name(result, metric): value} over every numeric metric of `results`."""
    out: dict[str, float] = {}
    for r in results:
        for metric, value in r.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name(r, metric)] = float(value)
    return out
