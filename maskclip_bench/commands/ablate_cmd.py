"""`maskclip-bench ablate`: run a named (or product) grid of training configs, evaluate every cell, write tables.

See `maskclip_bench.experiments.ablate` for the cell layout and resumption and `maskclip_bench.results.aggregate` for the tables.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from maskclip_bench.commands.console import command_console, command_line

from maskclip_bench.commands.options import (QUIET, SET, TRAIN_BATCH, TRAIN_DATA, TRAIN_MODEL, TRAIN_STEPS,
                                             allow_pipe_option)


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
    grid: list[str] = typer.Option([], "--grid", help="method | mask_ratio | decoder_depth | distill_target | mlm "
                                   "| contrastive_view | ema_momentum | compute | cost (repeat for a product grid)"),
    values: Optional[str] = typer.Option(None, "--values", help="comma-separated values replacing the grid's "
                                         "defaults (one --grid only)"),
    base_config: Optional[Path] = typer.Option(None, "--base-config", help="YAML/JSON config every cell starts from"),
    allow_pipe: bool = allow_pipe_option("--base-config"),
    set_: list[str] = SET,
    seeds: int = typer.Option(1, "--seeds", help="seeds per value (0 .. N-1)"),
    steps: Optional[int] = TRAIN_STEPS,
    batch_size: Optional[int] = TRAIN_BATCH,
    model: Optional[str] = TRAIN_MODEL,
    data: Optional[str] = TRAIN_DATA,
    suite: str = typer.Option("quick", "--suite", help="evaluation suite of each cell (quick | shapes | full)"),
    eval_dataset: list[str] = typer.Option([], "--eval-dataset", help="extra eval dataset (repeatable); a bare "
                                           "shapes:test=N,train=N,val=N sets the suite's shapes sizes"),
    eval_batch_size: int = typer.Option(250, "--eval-batch-size"),
    out: Optional[Path] = typer.Option(None, "--out", help="cell folders (default results/ablations/<grid>)"),
    tables: Path = typer.Option(Path("results"), "--tables", help="folder for ablation_<grid>.md/.csv/.png"),
    workers: int = typer.Option(1, "--workers", help="cells run in parallel processes (--launcher local)"),
    threads: int = typer.Option(0, "--threads", help="torch threads per cell (0: cores // workers; with "
                                "--launcher slurm, the job's CPUs per task, which --threads N also requests)"),
    quiet: bool = QUIET,
    tables_only: bool = typer.Option(False, "--tables-only", help="train nothing: write the tables from the cells "
                                     "finished so far (each row says how many seeds it has)"),
    reuse: bool = typer.Option(True, "--reuse/--no-reuse", help="copy a cell whose config and eval equal a finished "
                               "cell's in a sibling grid folder (e.g. mask_ratio=0.75 = method=maskclip)"),
    status: bool = typer.Option(False, "--status", help="show each cell's state (from the --out folder alone) and "
                                "exit"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for queued/running cells (and write the tables) "
                              "or return once the cells are submitted"),
    launcher: str = typer.Option("local", "--launcher", help="local (processes here) | slurm (one job per cell "
                                 "through submitit, the package's slurm extra)"),
    nodes: int = typer.Option(1, "--nodes", help="slurm: nodes per cell"),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="slurm: GPUs per node, one training task each"),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition"),
    time_limit: str = typer.Option("60", "--time", help="slurm: time limit per job (MM, HH:MM:SS, D-HH:MM:SS); a "
                                   "job near it checkpoints and is requeued"),
    account: Optional[str] = typer.Option(None, "--account", help="slurm: account"),
    qos: Optional[str] = typer.Option(None, "--qos", help="slurm: quality of service"),
    slurm_extra: list[str] = typer.Option([], "--slurm-extra", help="slurm: any other sbatch parameter, key=value "
                                          "(repeatable), e.g. constraint=a100"),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="slurm: cells running at once "
                                                 "(the job array's %N cap)"),
    submitit_cluster: str = typer.Option("slurm", "--submitit-cluster", help="slurm launcher backend: slurm, local "
                                         "(submitit's local executor, this machine: the same job code without a "
                                         "cluster) or a submitit plugin's executor name"),
) -> None:
    """Train and evaluate every cell of a grid (values x seeds), resumably; write mean ± std tables and plots."""
    from maskclip_bench.commands.run_config import (announce_precision, build_config, check_model_and_data,
                                                    trust_typed_data_spec)
    from maskclip_bench.evaluation.api import check_specs
    from maskclip_bench.evaluation.suites import SUITES
    from maskclip_bench.experiments import ablate, grid_status
    from maskclip_core.errors import ConfigError, DataError

    console = command_console()
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"unknown --launcher '{launcher}' (choose local or slurm)")
    if status:
        if out is None and not grid:
            raise ConfigError("--status needs --out (the grid folder) or --grid")
        root = out or Path("results/ablations") / ablate.grid_label(list(grid))
        show_status(console, root, grid_status.grid_status(grid_status.cell_folders(root)))
        return
    if suite not in SUITES:
        raise DataError(f"unknown suite '{suite}' (choose {', '.join(SUITES)})")
    check_specs(eval_dataset)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    grids = ablate.resolve_grids(grid, values)
    spec = _slurm_spec(launcher, nodes, gpus_per_node, partition, time_limit, account, qos, slurm_extra,
                       max_concurrent, submitit_cluster, threads)
    flags = {"model.name": model, "data.spec": data, "run.steps": steps, "run.batch_size": batch_size}
    base = build_config(base_config, set_, flags)
    trust_typed_data_spec(base, flags, set_, allow_pipe and base_config is not None)
    check_model_and_data(base)
    if spec is None:
        announce_precision(base)  # every cell runs (and records) the precision resolved here
    # With slurm, `auto` is resolved inside each job, on the device the cell trains on.
    grids = ablate.bind_grids(grids, base, explicit_values=values is not None)
    label = ablate.grid_label([g.name for g in grids])
    out_root = out or Path("results/ablations") / label
    cores = os.cpu_count() or 1
    if spec is None:
        per_cell = threads if threads > 0 else max(1, cores // workers)
    else:
        per_cell = threads  # 0: the job's CPUs, found inside the job
    cells = ablate.expand_cells(grids, seeds)
    jobs, finished = ablate.plan_jobs(base, grids, cells, out_root, per_cell,
                                      ablate.EvalSpec(suite, tuple(eval_dataset), eval_batch_size),
                                      reuse_from=[out_root.parent] if reuse else [])
    reused = sum(1 for r in finished if (Path(r.folder) / ablate.CELL_MARKER).is_file()
                 and "reused_from" in (ablate.read_cell(Path(r.folder)) or {}))
    # Cells a job (or another `ablate`) holds right now are waited for, never started a second time.
    held = [s for s in grid_status.grid_status([Path(j.folder) for j in jobs]) if s.active] if jobs else []
    held_folders = {s.folder for s in held}
    jobs = [j for j in jobs if j.folder not in held_folders]
    where = (f"{workers} worker(s), {per_cell} thread(s) each" if spec is None else
             f"one {spec.cluster} job each ({spec.nodes} node(s) x {spec.tasks_per_node} task(s))")
    console.print(f"grid {label}: {len(cells)} cell(s) ({len(finished)} finished before, {reused} of them "
                  f"copied from an identical cell of another grid"
                  f"{f', {len(held)} queued or running' if held else ''}), {where}, cells in {out_root}/")
    if tables_only:
        console.print(f"--tables-only: {len(jobs) + len(held)} unfinished cell(s) left out")
        jobs, held = [], []
    outputs = GridOutputs(grids, base, seeds, suite, eval_dataset, tables, label, tables_only, console)
    start = time.time()
    results = list(finished)
    if spec is None:
        with ablate_progress(len(cells), workers, not quiet and not tables_only and bool(jobs), len(finished)) as bar:
            def update(event: str, result: Any) -> None:
                bar.update(event, result)
                if event == "end":
                    results.append(result)
                    outputs.write(results)

            run = ablate.run_grid(jobs, [], workers=workers, on_update=update)
        results = list(finished) + run.results
        if any(r.error.startswith("InterruptedError") for r in run.results):
            held = []  # this process was asked to stop (SIGTERM): do not wait for other cells
    handles: list[Any] = []
    if spec is not None and jobs:
        submitted, handles = _submit(console, spec, jobs, out_root)
        held += submitted
    if held:
        results = _await_cells(console, held, results, outputs, wait, spec, quiet, handles)
        if results is None:
            return
    invocation = ("" if tables_only else f"; this invocation {(time.time() - start) / 60:.1f} min with "
                  + (f"{workers} worker(s) x {per_cell} thread(s) on {cores} core(s)" if spec is None else
                     f"one {spec.cluster} job per cell"))
    outputs.write(results, invocation, announce=True)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        for r in failed:
            console.print(f"[red]failed[/red] {r.folder}: {r.error} (traceback in {r.folder}/{ablate.CELL_ERROR})")
        console.print(f"{len(failed)} cell(s) failed; rerun the same command to retry them")
        raise typer.Exit(1)


def _slurm_spec(launcher: str, nodes: int, gpus_per_node: int, partition: Optional[str], time_limit: str,
                account: Optional[str], qos: Optional[str], slurm_extra: list[str], max_concurrent: Optional[int],
                cluster: str, threads: int) -> Any:
    """The SlurmSpec of the flags (None for --launcher local); one-line errors for impossible values."""
    from maskclip_core.errors import ConfigError

    if launcher != "slurm":
        return None
    from maskclip_bench.experiments.submitit_launcher import SlurmSpec, parse_extra, parse_time

    if nodes < 1 or gpus_per_node < 0:
        raise ConfigError(f"--nodes must be >= 1 and --gpus-per-node >= 0 (got {nodes}, {gpus_per_node})")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if cluster == "debug":
        raise ConfigError("--submitit-cluster debug runs jobs inside this process; use local")
    return SlurmSpec(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=threads if threads > 0 else None,
                     partition=partition, time_min=parse_time(time_limit), account=account, qos=qos,
                     extra=parse_extra(slurm_extra), max_concurrent=max_concurrent, cluster=cluster)


def _submit(console: Any, spec: Any, jobs: list[Any], out_root: Path) -> tuple[list[Any], list[Any]]:
    """Send the cells to the scheduler: (their queued statuses, submitit's job handles)."""
    from maskclip_bench.experiments import grid_status
    from maskclip_bench.experiments.submitit_launcher import make_executor, submit_cells

    folder = out_root / "submitit"
    executor = make_executor(folder, spec)
    handles = submit_cells(executor, jobs, spec.cluster, folder)
    ids = sorted({str(h.job_id).split("_")[0] for h in handles})
    console.print(f"submitted {len(jobs)} cell(s) to {spec.cluster}: job(s) {', '.join(ids)}; logs in {folder}/")
    return [grid_status.CellStatus(j.folder, "queued", str(h.job_id)) for j, h in zip(jobs, handles)], handles


def _await_cells(console: Any, held: list[Any], results: list[Any], outputs: "GridOutputs", wait: bool,
                 spec: Any, quiet: bool, handles: list[Any]) -> list[Any] | None:
    """Wait for queued/running cells and fold their outcomes into `results`; None with --no-wait. `handles`
    (this process's submitit jobs) are polled too, which reaps the local executor's finished controllers."""
    from maskclip_bench.experiments import ablate
    from maskclip_bench.experiments.submitit_launcher import wait_for_cells

    folders = [Path(s.folder) for s in held]
    if not wait:
        outputs.write(results)
        console.print(f"--no-wait: {len(held)} cell(s) queued or running; `maskclip-bench ablate ... --status` "
                      f"shows them, the same command run again waits for them and writes the tables")
        return None
    results = [r for r in results if r.folder not in {s.folder for s in held}]
    poll = 30.0 if spec is not None and spec.cluster == "slurm" else 0.5
    console.print(f"waiting for {len(held)} queued or running cell(s) (Ctrl-C stops waiting, not the jobs)")
    with ablate_progress(len(results) + len(held), max(1, len(held)), not quiet, len(results)) as bar:
        for _ in held:
            bar.update("start", None)

        def finished(cell: Any) -> None:
            marker = ablate.read_cell(Path(cell.folder))
            if marker is not None:
                result = ablate.CellResult(cell.folder, "done", marker.get("values", {}), marker.get("seed", 0),
                                           marker.get("metrics", {}), float(marker.get("wall_time_s", 0.0)))
            else:
                result = ablate.CellResult(cell.folder, "failed", error=cell.note if cell.state == "failed"
                                           else f"{cell.state}: {cell.note}")
            results.append(result)
            bar.update("end", result)
            outputs.write(results)

        try:
            wait_for_cells(folders, poll, finished, handles=handles)
        except KeyboardInterrupt:
            console.print("stopped waiting; the jobs go on (`--status` shows them, a rerun waits for them again)")
            raise typer.Exit(130) from None
    return results


class GridOutputs:
    """Writes the grid's tables from the cells finished so far (after each cell, and at the end)."""

    def __init__(self, grids: list[Any], base: Any, seeds: int, suite: str, eval_dataset: list[str], tables: Path,
                 label: str, tables_only: bool, console: Any) -> None:
        self.grids, self.base, self.seeds, self.suite, self.eval_dataset = grids, base, seeds, suite, eval_dataset
        self.tables, self.label, self.tables_only, self.console = tables, label, tables_only, console

    def write(self, results: list[Any], invocation: str = "", announce: bool = False) -> None:
        """Tables of the good cells among `results` (nothing when none has finished)."""
        from maskclip_bench.experiments import ablate
        from maskclip_bench.results import aggregate

        good = [r for r in results if r.status != "failed"]
        if not good:
            return
        axes = [g.name for g in self.grids]
        base = self.base
        command = command_line("maskclip-bench ablate")
        copied = {r.folder for r in good if "reused_from" in (ablate.read_cell(Path(r.folder)) or {})}
        compute = sum(r.wall_time_s for r in good if r.folder not in copied)
        header = (f"Produced by: `{command}`\n\n"
                  f"Settings: model {base.model.name}, data {base.data.spec}, {base.run.steps} steps, batch "
                  f"{base.run.batch_size}, lr {base.optim.lr}, {'up to ' if self.tables_only else ''}{self.seeds} "
                  f"seed(s) per value, eval suite {self.suite}"
                  f"{' + ' + ', '.join(self.eval_dataset) if self.eval_dataset else ''}.\n\n"
                  f"Wall time: {compute / 60:.1f} min summed over the {len(good) - len(copied)} cell(s) trained for "
                  f"this grid (train + eval; {len(copied)} more copied from identical cells of other grids)"
                  f"{invocation}.\n\n"
                  f"{ablate.commit_line([Path(r.folder) for r in good])}\n\n"
                  + ablate.cost_line([ablate.read_cell(Path(r.folder)) or {"values": r.values} for r in good],
                                     axes[0]))
        cell_dicts = [{"values": r.values, "seed": r.seed, "metrics": r.metrics} for r in good]
        written = aggregate.write_tables(cell_dicts, axes, ablate.reference_assignment(self.grids), self.tables,
                                         self.label, header)
        if announce:
            self.console.print("wrote " + ", ".join(str(p) for p in written))


def show_status(console: Any, root: Path, cells: list[Any]) -> None:
    """Print one row per cell: state, job id, last logged step / total, and why it failed or stopped."""
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    if not cells:
        console.print(f"no cells under {root}/")
        return
    colors = {"finished": "green", "failed": "red", "running": "cyan", "queued": "yellow", "stopped": "magenta"}
    table = Table(title=f"{root}/")
    for column in ("cell", "state", "job", "step", "note"):
        table.add_column(column, overflow="fold")
    for cell in cells:
        step = "" if cell.step is None else f"{cell.step}" + (f"/{cell.total}" if cell.total else "")
        color = colors.get(cell.state, "white")
        table.add_row(escape(str(Path(cell.folder).relative_to(root))), f"[{color}]{cell.state}[/{color}]",
                      cell.job_id, step, escape(cell.note))
    console.print(table)
    counts = Counter(c.state for c in cells)
    console.print(" · ".join(f"{state} {n}" for state, n in sorted(counts.items())))


def ablate_progress(total: int, workers: int, enabled: bool, already: int) -> GridProgress:
    """A GridProgress that counts the cells finished before this run as done."""
    progress = GridProgress(total, workers, enabled)
    progress.done = already
    return progress


def register(app: typer.Typer) -> None:
    """Add `ablate`."""
    app.command("ablate")(ablate_command)
