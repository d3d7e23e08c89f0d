"""`maskclip-bench ablate`: run a named (or product) grid of training configs, evaluate every cell, write tables.

See `maskclip_bench.ablate` for the cell layout and resumption and `maskclip_bench.aggregate` for the tables.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer


class GridProgress:
    """Rich progress line: cells done / running / left / failed, elapsed time and an ETA from the mean cell time."""

    def __init__(self, total: int, workers: int, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.workers = total, max(1, workers)
        self.done = self.running = self.failed = 0
        self.times: list[float] = []
        self.progress = Progress(TextColumn("[bold]ablate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[status]}"), disable=not enabled)
        self.task: Any = None

    def __enter__(self) -> "GridProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("cells", total=self.total, completed=self.done, status=self._status())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _status(self) -> str:
        left = self.total - self.done - self.failed - self.running
        eta = "ETA ?"
        if self.times:
            # Remaining work (queued + half of the running cells) spread over the workers.
            mean = sum(self.times) / len(self.times)
            seconds = mean * (left + 0.5 * self.running) / self.workers
            eta = f"ETA {time.strftime('%H:%M:%S', time.gmtime(seconds))}"
        return f"done {self.done} · running {self.running} · left {left} · failed {self.failed} · {eta}"

    def update(self, event: str, result: Any) -> None:
        """Callback of `run_grid`."""
        from rich.markup import escape

        if event == "start":
            self.running += 1
        else:
            self.running -= 1
            if result.status == "failed":
                self.failed += 1
                self.progress.console.print(f"[red]failed[/red] {escape(result.folder)}: {escape(result.error)}")
            else:
                self.done += 1
                self.times.append(result.wall_time_s)
        self.progress.update(self.task, completed=self.done + self.failed, status=self._status())


def ablate_command(
    grid: list[str] = typer.Option(..., "--grid", help="method | mask_ratio | decoder_depth | distill_target | mlm "
                                   "| contrastive_view (repeat for a product grid)"),
    values: Optional[str] = typer.Option(None, "--values", help="comma-separated values replacing the grid's "
                                         "defaults (one --grid only)"),
    base_config: Optional[Path] = typer.Option(None, "--base-config", help="YAML/JSON config every cell starts from"),
    allow_pipe: bool = typer.Option(False, "--allow-pipe", help="let the --base-config file's data spec run a "
                                    "wds:pipe:COMMAND shell command (--data on the command line needs no flag)"),
    set_: list[str] = typer.Option([], "--set", help="any other config field: key=value (repeatable)"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per value (0 .. N-1)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimizer steps per cell"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip model config name"),
    data: Optional[str] = typer.Option(None, "--data", help="training data spec (shapes | csv:PATH | wds:PATTERN)"),
    suite: str = typer.Option("quick", "--suite", help="evaluation suite of each cell (quick | shapes | full)"),
    eval_dataset: list[str] = typer.Option([], "--eval-dataset", help="extra eval dataset (repeatable); a bare "
                                           "shapes:test=N,train=N,val=N sets the suite's shapes sizes"),
    eval_batch_size: int = typer.Option(250, "--eval-batch-size"),
    out: Optional[Path] = typer.Option(None, "--out", help="cell folders (default results/ablations/<grid>)"),
    tables: Path = typer.Option(Path("results"), "--tables", help="folder for ablation_<grid>.md/.csv/.png"),
    workers: int = typer.Option(1, "--workers", help="cells run in parallel processes"),
    threads: int = typer.Option(0, "--threads", help="torch threads per cell (0: cores // workers)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress display"),
    tables_only: bool = typer.Option(False, "--tables-only", help="train nothing: write the tables from the cells "
                                     "finished so far (each row says how many seeds it has)"),
    reuse: bool = typer.Option(True, "--reuse/--no-reuse", help="copy a cell whose config and eval equal a finished "
                               "cell's in a sibling grid folder (e.g. mask_ratio=0.75 = method=maskclip)"),
) -> None:
    """Train and evaluate every cell of a grid (values x seeds), resumably; write mean ± std tables and plots."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from rich.console import Console

    from maskclip_bench import ablate, aggregate
    from maskclip_bench.commands.evaluate import check_specs
    from maskclip_bench.commands.train import build_config, check_model_and_data, trust_typed_data_spec
    from maskclip_bench.suites import SUITES
    from maskclip_core.errors import ConfigError, DataError

    if suite not in SUITES:
        raise DataError(f"unknown suite '{suite}' (choose {', '.join(SUITES)})")
    check_specs(eval_dataset)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    grids = ablate.resolve_grids(grid, values)
    flags = {"model.name": model, "data.spec": data, "run.steps": steps, "run.batch_size": batch_size}
    base = build_config(base_config, set_, flags)
    trust_typed_data_spec(base, flags, set_, allow_pipe and base_config is not None)
    check_model_and_data(base)
    label = ablate.grid_label([g.name for g in grids])
    out_root = out or Path("results/ablations") / label
    cores = os.cpu_count() or 1
    per_cell = threads if threads > 0 else max(1, cores // workers)
    cells = ablate.expand_cells(grids, seeds)
    jobs, finished = ablate.plan_jobs(base, grids, cells, out_root, per_cell,
                                      ablate.EvalSpec(suite, tuple(eval_dataset), eval_batch_size),
                                      reuse_from=[out_root.parent] if reuse else [])
    reused = sum(1 for r in finished if (Path(r.folder) / ablate.CELL_MARKER).is_file()
                 and "reused_from" in (ablate.read_cell(Path(r.folder)) or {}))
    console = Console()
    console.print(f"grid {label}: {len(cells)} cell(s) ({len(finished)} finished before, {reused} of them "
                  f"copied from an identical cell of another grid), {workers} worker(s), "
                  f"{per_cell} thread(s) each, cells in {out_root}/")
    if tables_only:
        console.print(f"--tables-only: {len(jobs)} unfinished cell(s) left out")
        jobs = []
    with ablate_progress(len(cells), workers, not quiet and not tables_only, len(finished)) as progress:
        run = ablate.run_grid(jobs, finished, workers=workers, on_update=progress.update)

    good = [r for r in run.results if r.status != "failed"]
    axes = [g.name for g in grids]
    command = "maskclip-bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "maskclip-bench ablate"
    copied = {r.folder for r in good if "reused_from" in (ablate.read_cell(Path(r.folder)) or {})}
    compute = sum(r.wall_time_s for r in good if r.folder not in copied)
    invocation = ("" if tables_only else f"; this invocation {run.wall_time_s / 60:.1f} min with {workers} worker(s) "
                  f"x {per_cell} thread(s) on {cores} core(s)")
    header = (f"Produced by: `{command}`\n\n"
              f"Settings: model {base.model.name}, data {base.data.spec}, {base.run.steps} steps, batch "
              f"{base.run.batch_size}, lr {base.optim.lr}, {'up to ' if tables_only else ''}{seeds} seed(s) per "
              f"value, eval suite {suite}{' + ' + ', '.join(eval_dataset) if eval_dataset else ''}.\n\n"
              f"Wall time: {compute / 60:.1f} min summed over the {len(good) - len(copied)} cell(s) trained for "
              f"this grid (train + eval; {len(copied)} more copied from identical cells of other grids)"
              f"{invocation}.")
    if good:
        cell_dicts = [{"values": r.values, "seed": r.seed, "metrics": r.metrics} for r in good]
        written = aggregate.write_tables(cell_dicts, axes, ablate.reference_assignment(grids), tables, label, header)
        console.print("wrote " + ", ".join(str(p) for p in written))
    if run.failed:
        for r in run.failed:
            console.print(f"[red]failed[/red] {r.folder}: {r.error} (traceback in {r.folder}/{ablate.CELL_ERROR})")
        console.print(f"{len(run.failed)} cell(s) failed; rerun the same command to retry them")
        raise typer.Exit(1)


def ablate_progress(total: int, workers: int, enabled: bool, already: int) -> GridProgress:
    """A GridProgress that counts the cells finished before this run as done."""
    progress = GridProgress(total, workers, enabled)
    progress.done = already
    return progress


def register(app: typer.Typer) -> None:
    """Add `ablate`."""
    app.command("ablate")(ablate_command)
