"""Ablation grids: named grids of training-config values, expanded into cells (values x seeds), each trained
and evaluated in its own folder, resumably, optionally in parallel processes.

A cell folder (``<out>/<grid>=<value>[/<grid2>=<value2>]/seed=<n>/``) holds the trainer's ``config.json``,
``metrics.jsonl`` and ``checkpoints/last.pt``, the evaluation ``records/``, and, written last, ``cell.json``
(the cell's config, metrics and times). A cell with ``cell.json`` is finished and skipped on a rerun; a
cell with a checkpoint but no ``cell.json`` was interrupted and resumes from its checkpoint; a cell that
raises writes ``error.txt`` and the grid goes on with the others. Each start of a cell is noted in
``attempt.json`` (and a cell sent to a scheduler has ``job.json``): `maskclip_bench.experiments.grid_status` reads a
cell's state from these files, and `maskclip_bench.experiments.submitit_launcher` runs cells as SLURM jobs.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from maskclip_bench.evaluation.api import EvalSettings, evaluate_quietly, metric_values
from maskclip_bench.evaluation.hook import make_eval_hook
from maskclip_bench.evaluation.suites import plan_suite
from maskclip_bench.experiments.grid_status import CELL_ERROR, CELL_MARKER, record_attempt, write_json_atomic
from maskclip_bench.perf import throughput as perf
from maskclip_core.atomic_write import write_text_atomic
from maskclip_core.config import TrainConfig, set_value, validate
from maskclip_core.distributed import world_info_from_env
from maskclip_core.ema import default_momentum
from maskclip_core.errors import ConfigError
from maskclip_core.thread_limit import thread_limit
from maskclip_core.trainer import train


@dataclass(frozen=True)
class Grid:
    """A named axis of an ablation: one config key, its values and the paper's reference value."""

    name: str
    key: str  # TrainConfig key (`section.field`)
    values: tuple[Any, ...]
    reference: Any
    description: str = ""
    # For grids whose values depend on the run (e.g. on its length): base config -> (values, reference).
    derive: Callable[[TrainConfig], tuple[tuple[Any, ...], Any]] | None = None
    # For values that set more than `key` (e.g. a method and its step budget): (config, value) -> None.
    apply: Callable[[TrainConfig, Any], None] | None = None


def ema_momentum_values(base: TrainConfig) -> tuple[tuple[float, ...], float]:
    """The `ema_momentum` grid for the base run's length: the run-length-aware default m0 (the reference), the
    momenta whose averaging horizon 1 / (1 - m) is 1/4, 1/2, 2 and 4 times m0's, and the paper's 0.996.

    m0 is kept exact (the others are rounded to 4 places) so that the reference cell is the very run a default
    MaskCLIP cell is, and is copied from a sibling grid instead of trained again."""
    m0 = default_momentum(base.run.steps)
    horizon = 1.0 / (1.0 - m0)
    values = {m0, 0.996} | {round(1.0 - 1.0 / (horizon * f), 4) for f in (0.25, 0.5, 2.0, 4.0) if horizon * f > 1}
    return tuple(sorted(values)), m0


def apply_method(cfg: TrainConfig, value: str) -> None:
    """A `method` grid value: ``clip``, ``maskclip``, or ``maskclip-masked-view`` (MaskCLIP whose contrastive image
    features come from the masked student pass, FLIP-style, with no full-image student pass). ConfigError else."""
    text = str(value)
    if text not in ("clip", "maskclip", "maskclip-masked-view"):
        raise ConfigError(f"method value '{value}' is not clip, maskclip or maskclip-masked-view")
    cfg.method.name = "clip" if text == "clip" else "maskclip"
    if text == "maskclip-masked-view":
        cfg.method.contrastive_view = "masked"


def apply_budget(cfg: TrainConfig, value: str) -> None:
    """A `compute` grid value ``<method>[_x<factor>]``: that method trained for `factor` times the base run's steps,
    its warm-up scaled alike so the schedule keeps its shape. ConfigError for anything else."""
    method, sep, factor_text = str(value).partition("_x")
    try:
        factor = float(factor_text) if sep else 1.0
    except ValueError:
        factor = float("nan")
    if method not in ("clip", "maskclip") or not factor > 0:
        raise ConfigError(f"compute value '{value}' is not <method>[_x<factor>] (e.g. clip_x1.74)")
    cfg.method.name = method
    cfg.run.steps = max(1, round(cfg.run.steps * factor))
    cfg.optim.warmup = round(cfg.optim.warmup * factor)


# The `cost` grid's values: a name -> the method and the cost-cutting switches it sets (README, "Cost-cutting
# switches"). `late<f>`: distillation and MLM on only from fraction f of the run (SigLIP 2's recipe);
# `teacher<k>`: EMA update every k steps; `mlm<f>`: MLM on fraction f of each batch.
_COST_SWITCHES = {"late": ("distill_start", "mlm_start"), "teacher": ("teacher_every",), "mlm": ("mlm_fraction",)}


def apply_cost(cfg: TrainConfig, value: str) -> None:
    """A `cost` grid value: ``maskclip``, ``clip``, or maskclip with one switch, ``late<f>`` (e.g. late0.8),
    ``teacher<k>`` (teacher4) or ``mlm<f>`` (mlm0.5), at the base run's steps. ConfigError for anything else."""
    text = str(value)
    if text in ("clip", "maskclip"):
        cfg.method.name = text
        return
    prefix = next((p for p in _COST_SWITCHES if text.startswith(p)), None)
    number = text[len(prefix):] if prefix else ""
    try:
        parsed = int(number) if prefix == "teacher" else float(number)
    except ValueError:
        prefix = None
    if prefix is None:
        raise ConfigError(f"cost value '{value}' is not clip, maskclip, late<f>, teacher<k> or mlm<f> "
                          "(e.g. late0.8, teacher4, mlm0.5)")
    cfg.method.name = "maskclip"
    for key in _COST_SWITCHES[prefix]:
        setattr(cfg.method, key, parsed)
    validate(TrainConfig.from_dict(cfg.to_dict()))  # an out-of-range number fails here, with the field's message


def flop_ratio(base: TrainConfig) -> float:
    """FLOPs of one `maskclip` training step over one `clip` step for the base run's model, batch and method
    settings, counted by torch's FlopCounterMode on one real step each (the same count as `bench`) on the base
    run's own first batch (the text passes' cost follows its captions' length)."""

    images, text = perf.make_batch(base.model.name, base.run.batch_size, torch.device("cpu"), seed=base.run.seed,
                                   spec=base.data.spec)
    counts = {}
    for name in ("clip", "maskclip"):
        step = perf.OurStep(name, base.model.name, images, text, "fp32",
                            method={**asdict(base.method), "name": name})
        counts[name] = perf.count_flops(step)
    return counts["maskclip"] / counts["clip"]


def compute_values(base: TrainConfig) -> tuple[tuple[str, ...], str]:
    """The `compute` grid: MaskCLIP (the reference), CLIP at the same steps, and CLIP given MaskCLIP's training FLOPs
    (steps times the counted FLOP ratio). A time-matched row is machine-specific: add it with --values, e.g.
    ``maskclip,clip,clip_x1.74,clip_x1.50`` with the ratio of the two methods' training seconds."""
    return ("maskclip", "clip", f"clip_x{flop_ratio(base):.2f}"), "maskclip"


GRIDS: dict[str, Grid] = {
    "method": Grid("method", "method.name", ("clip", "maskclip", "maskclip-masked-view"), "clip",
                   "CLIP vs MaskCLIP (and MaskCLIP with the masked contrastive view), same code and budget",
                   apply=apply_method),
    "mask_ratio": Grid("mask_ratio", "method.mask_ratio", (0.25, 0.5, 0.75, 0.9), 0.75, "fraction of masked patches"),
    "decoder_depth": Grid("decoder_depth", "method.decoder_depth", (0, 1, 2, 4), 2, "image decoder blocks"),
    "distill_target": Grid("distill_target", "method.distill_target", ("feature", "soft", "pixel"), "feature",
                           "what the masked patches predict"),
    "mlm": Grid("mlm", "method.w_mlm", (0.0, 1.0), 1.0, "weight of the text MLM loss"),
    "contrastive_view": Grid("contrastive_view", "method.contrastive_view", ("full", "masked"), "full",
                             "contrastive image features from the full or the masked image"),
    "ema_momentum": Grid("ema_momentum", "method.ema_momentum", (), None,
                         "teacher's starting EMA momentum (reference: the run-length-aware default)",
                         derive=ema_momentum_values),
    "compute": Grid("compute", "method.name", (), "maskclip",
                    "MaskCLIP vs CLIP at equal steps and at equal training FLOPs (value <method>_x<step factor>)",
                    derive=compute_values, apply=apply_budget),
    "cost": Grid("cost", "method.name", ("maskclip", "clip", "late0.8", "teacher4", "mlm0.5"), "maskclip",
                 "MaskCLIP's cost-cutting switches against full MaskCLIP and CLIP, same steps", apply=apply_cost),
}


def bind_grids(grids: Sequence[Grid], base: TrainConfig, explicit_values: bool = False) -> list[Grid]:
    """Grids with run-dependent values filled in for `base` (values given with --values are kept)."""
    out = []
    for g in grids:
        if g.derive is not None:
            values, reference = g.derive(base)
            out.append(Grid(g.name, g.key, g.values if explicit_values else values, reference, g.description,
                            apply=g.apply))
        else:
            out.append(g)
    return out


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: a value per axis and a seed."""

    assignment: tuple[tuple[str, Any], ...]  # ((grid name, value), ...) in grid order
    seed: int

    @property
    def values(self) -> dict[str, Any]:
        """{grid name: value}."""
        return dict(self.assignment)

    @property
    def folder(self) -> Path:
        """Relative folder: ``<grid>=<value>/.../seed=<n>``."""
        return Path(*(f"{name}={value_label(value)}" for name, value in self.assignment), f"seed={self.seed}")


def value_label(value: Any) -> str:
    """How a value appears in folder names and tables (floats to 6 significant digits: 0.9483602220505678, the
    exact run-length-aware EMA momentum at 600 steps, is 0.94836)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def grid_label(names: Sequence[str]) -> str:
    """File-name label of a (product) grid: names joined with ``x``."""
    return "x".join(names)


def _typed_values(grid: Grid, raw: Sequence[Any]) -> tuple[Any, ...]:
    """Values coerced to the config field's type (``--values 0.5,0.9`` -> floats); ConfigError if invalid."""
    out = []
    if grid.apply is not None:  # composite values: strings, checked by applying them
        for value in raw:
            grid.apply(TrainConfig(), str(value).strip())
        values = tuple(str(v).strip() for v in raw)
        if len(set(values)) != len(values):
            raise ConfigError(f"--values for grid '{grid.name}' repeats a value: {', '.join(map(str, raw))}")
        return values
    for value in raw:
        cfg = TrainConfig()
        set_value(cfg, grid.key, value.strip() if isinstance(value, str) else value)
        section, name = grid.key.split(".", 1)
        out.append(getattr(getattr(cfg, section), name))
    if len(set(out)) != len(out):
        raise ConfigError(f"--values for grid '{grid.name}' repeats a value: {', '.join(map(str, raw))}")
    return tuple(out)


def resolve_grids(names: Sequence[str], values: str | None = None) -> list[Grid]:
    """The named grids, `values` (comma-separated, only with one grid) replacing the default values."""
    if not names:
        raise ConfigError(f"give at least one --grid ({', '.join(GRIDS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--grid repeated: {', '.join(names)}")
    unknown = [n for n in names if n not in GRIDS]
    if unknown:
        raise ConfigError(f"unknown grid '{unknown[0]}' (choose {', '.join(GRIDS)})")
    grids = [GRIDS[n] for n in names]
    if values is not None:
        if len(grids) != 1:
            raise ConfigError("--values needs exactly one --grid")
        parts = [v for v in values.split(",") if v.strip()]
        if not parts:
            raise ConfigError("--values is empty")
        g = grids[0]
        grids = [Grid(g.name, g.key, _typed_values(g, parts), g.reference, g.description, g.derive, g.apply)]
    return grids


def expand_cells(grids: Sequence[Grid], seeds: int, first_seed: int = 0) -> list[Cell]:
    """Every (value combination, seed) of a product of grids; seeds first_seed .. first_seed + seeds - 1."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    for g in grids:
        labels = [value_label(v) for v in g.values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"grid '{g.name}' has values that share a folder name: {', '.join(labels)}")
    combos = itertools.product(*(tuple((g.name, v) for v in g.values) for g in grids))
    return [Cell(tuple(combo), seed) for combo in combos for seed in range(first_seed, first_seed + seeds)]


def reference_assignment(grids: Sequence[Grid]) -> dict[str, Any]:
    """{grid name: reference value}; the reference row of a product grid has every axis at its reference."""
    return {g.name: g.reference for g in grids}


def cell_config(base: TrainConfig, grids: Sequence[Grid], cell: Cell, out_root: Path, threads: int) -> TrainConfig:
    """The cell's TrainConfig: a copy of `base` with the cell's values, seed, folder and thread budget."""
    cfg = TrainConfig.from_dict(base.to_dict())
    for grid in grids:
        if grid.apply is not None:
            grid.apply(cfg, cell.values[grid.name])
        else:
            set_value(cfg, grid.key, cell.values[grid.name], parse=False)
    cfg.run.seed = cell.seed
    cfg.run.out = str(out_root / cell.folder)
    cfg.run.threads = threads
    if cfg.method.ema_momentum is None and cfg.run.epochs <= 0:
        # What the trainer resolves "auto" to (and saves), so that a finished cell's config compares equal.
        cfg.method.ema_momentum = default_momentum(cfg.run.steps)
    return validate(cfg)


# Fields that may differ between a finished cell and a rerun without changing its numbers.
_IGNORED_KEYS = ("run.out", "run.threads", "data.workers", "run.log_every", "run.checkpoint_every",
                 "run.keep_checkpoints", "run.device", "run.grad_checkpointing", "run.torchcompile",
                 "run.compile_backend", "run.max_nonfinite", "run.max_bad_fraction")


def _matches(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a cell's saved (comparable) config is the one asked for; a wanted precision `auto` (resolved in the
    job, on the cell's own device: the slurm launcher) matches whatever the job resolved it to."""
    if wanted.get("run", {}).get("precision") == "auto":
        saved = {**saved, "run": {**saved.get("run", {}), "precision": "auto"}}
    return saved == wanted


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the fields that do not change results (paths, threads, logging, fault limits).
    Fields a cell's saved config lacks (written by an older version) take today's defaults."""
    out = TrainConfig.from_dict(json.loads(json.dumps(config))).to_dict()
    for key in _IGNORED_KEYS:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


@dataclass
class EvalSpec:
    """How each cell is evaluated: a suite and extra dataset specs (a bare ``shapes:OPTIONS`` sets sizes)."""

    suite: str = "quick"
    datasets: tuple[str, ...] = ()
    batch_size: int = 250


@dataclass
class CellJob:
    """Everything a worker process needs to run one cell (picklable)."""

    config: dict[str, Any]
    folder: str
    values: dict[str, Any]
    seed: int
    eval_spec: EvalSpec
    threads: int


@dataclass
class CellResult:
    """Outcome of one cell: "done", "skipped" (finished before), or "failed"."""

    folder: str
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    error: str = ""


def metric_key(dataset: str, metric: str, variant: str = "") -> str:
    """``<dataset without options>/<metric>[variant]``: the same name whatever the eval set sizes."""
    return f"{dataset.split(':', 1)[0]}/{metric}" + (f"[{variant}]" if variant else "")


def read_cell(folder: Path) -> dict[str, Any] | None:
    """The finished marker of a cell folder, or None when the cell has not finished."""
    path = folder / CELL_MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a half-written marker (it is written atomically, so only by hand) counts as unfinished


def evaluate_cell(ckpt: Path, records_dir: Path, eval_spec: EvalSpec, seed: int) -> dict[str, float]:
    """Run the eval suite on a cell's checkpoint (one thread), write records; return {metric_key: value}."""
    results = evaluate_quietly(str(ckpt), lambda session: plan_suite(session, eval_spec.suite,
                                                                     list(eval_spec.datasets)),
                               EvalSettings(batch_size=eval_spec.batch_size, no_cache=True, threads=1), records_dir,
                               specs=eval_spec.datasets)
    return metric_values(results, lambda r, name: metric_key(r.dataset, name, r.variant))


def run_cell(job: CellJob, job_id: str = "") -> CellResult:
    """Train (or resume) and evaluate one cell; never raises: a failure is written to ``error.txt``.

    Under a data-parallel launch (a SLURM job with one task per GPU) every rank trains; rank 0 alone evaluates
    and writes the cell's files. `job_id` is the scheduler's, noted in ``attempt.json`` for ``--status``.
    """
    folder = Path(job.folder)
    primary = world_info_from_env()[1] == 0
    start = time.time()
    with thread_limit(job.threads):  # the cell's own count for its training and evaluation, restored after
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if primary:
                (folder / CELL_ERROR).unlink(missing_ok=True)
                record_attempt(folder, job_id)
            cfg = TrainConfig.from_dict(job.config)
            ckpt = folder / "checkpoints" / "last.pt"
            hook = make_eval_hook(cfg) if cfg.run.eval_every > 0 else None
            run = train(cfg, resume=ckpt.is_file(), on_eval=hook)
            # SIGTERM: the checkpoint is saved; a rerun resumes the cell, never scores it half-trained.
            if run.stopped_early:
                raise InterruptedError(f"training stopped at step {run.steps} by SIGTERM; rerun the grid to resume")
            if not primary:
                return CellResult(str(folder), "done", job.values, job.seed, {}, time.time() - start)
            records = folder / "records"
            shutil.rmtree(records, ignore_errors=True)  # records of an interrupted evaluation would double count
            metrics = evaluate_cell(ckpt, records, job.eval_spec, job.seed)
            last = run.last_metrics or _last_logged(folder)
            for key in ("loss", "loss_contrastive", "loss_distill", "loss_mlm"):
                if last.get(key) is not None:
                    metrics[f"train/{key}"] = float(last[key])
            wall = time.time() - start
            write_json_atomic(folder / CELL_MARKER, {
                "values": job.values, "seed": job.seed, "config": job.config, "metrics": metrics,
                "steps": run.steps, "train_wall_time_s": run.wall_time_s, "wall_time_s": wall,
                # Training seconds alone (evaluations while training left out): what a compute-matched row matches.
                "train_seconds": last.get("wall_s"),
                "eval": {"suite": job.eval_spec.suite, "datasets": list(job.eval_spec.datasets)},
            })
            return CellResult(str(folder), "done", job.values, job.seed, metrics, wall)
        except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the grid
            if primary:
                write_text_atomic(folder / CELL_ERROR, traceback.format_exc())
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return CellResult(str(folder), "failed", job.values, job.seed, {}, time.time() - start, message)


def cost_line(cells: Sequence[Mapping[str, Any]], axis: str) -> str:
    """Steps and mean training seconds per value of `axis`, from finished cells' markers (`cell.json`)."""
    by_value: dict[str, list[Mapping[str, Any]]] = {}
    for cell in cells:
        by_value.setdefault(value_label(cell["values"][axis]), []).append(cell)
    parts = []
    for value, group in by_value.items():
        steps = sorted({c.get("steps") for c in group if c.get("steps") is not None})
        seconds = [c["train_seconds"] for c in group if c.get("train_seconds") is not None]
        timing = f", {sum(seconds) / len(seconds):.0f} s of training" if seconds else ""
        parts.append(f"{value}: {'/'.join(map(str, steps))} steps{timing}")
    return "Cost per value (mean over seeds; training seconds exclude evaluation): " + "; ".join(parts) + "."


def commit_line(folders: Sequence[Path]) -> str:
    """Which commit(s) the cells' checkpoints were evaluated at (the ``git_commit`` of each cell's records, the
    training commit of a cell whose evaluation ran in the same process), with the number of cells per commit."""
    counts: dict[str, int] = {}
    for folder in folders:
        commits = set()
        for path in sorted((Path(folder) / "records").glob("*.json")):
            try:
                commit = json.loads(path.read_text()).get("git_commit")
            except (OSError, ValueError):
                continue
            commits.add(commit[:10] if commit else "unknown")
        for commit in sorted(commits) or ["no records"]:
            counts[commit] = counts.get(commit, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    parts = [f"{commit} ({n} cell{'s' if n != 1 else ''})" for commit, n in ordered]
    return "Trained at commit: " + ", ".join(parts) + "."


def _last_logged(folder: Path) -> dict[str, Any]:
    """Last line of a run's metrics.jsonl (a resumed, already finished run logs nothing new)."""
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


@dataclass
class GridRun:
    """What `run_grid` did: every cell's result (finished before or now) and the wall time of this call."""

    results: list[CellResult]
    wall_time_s: float

    @property
    def failed(self) -> list[CellResult]:
        """Cells that raised."""
        return [r for r in self.results if r.status == "failed"]


def finished_cells(roots: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every finished cell (folder, marker) under the given folders, searched recursively."""
    found = []
    for root in roots:
        for marker in sorted(Path(root).glob(f"**/{CELL_MARKER}")) if Path(root).is_dir() else []:
            done = read_cell(marker.parent)
            if done is not None and "config" in done:
                found.append((marker.parent, done))
    return found


def reuse_cell(source: Path, marker: dict[str, Any], folder: Path, cell: Cell, config: dict[str, Any]) -> None:
    """Copy a finished cell with the same config and evaluation into `folder` (marker and records, not the
    checkpoint): the same run under another grid's name. The marker says where it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    if (source / "records").is_dir():
        shutil.copytree(source / "records", folder / "records", dirs_exist_ok=True)
    write_json_atomic(folder / CELL_MARKER, {**marker, "values": cell.values, "seed": cell.seed, "config": config,
                                              "reused_from": str(source)})


def plan_jobs(base: TrainConfig, grids: Sequence[Grid], cells: Sequence[Cell], out_root: Path, threads: int,
              eval_spec: EvalSpec, reuse_from: Sequence[Path] = ()) -> tuple[list[CellJob], list[CellResult]]:
    """(jobs to run, results of finished cells). A finished or started cell whose config differs from the
    one asked for now is an error: its numbers would silently mix two settings.

    A cell not yet started whose config and evaluation equal those of a finished cell under `reuse_from` (e.g.
    ``mask_ratio=0.75`` and ``method=maskclip`` in sibling grids) is copied from it instead of trained again.
    """
    jobs, finished = [], []
    eval_key = {"suite": eval_spec.suite, "datasets": list(eval_spec.datasets)}
    donors = [(src, m) for src, m in finished_cells(reuse_from) if m.get("eval") == eval_key]
    for cell in cells:
        cfg = cell_config(base, grids, cell, out_root, threads)
        folder = out_root / cell.folder
        wanted = comparable_config(cfg.to_dict())
        same = lambda other: _matches(comparable_config(other), wanted)  # noqa: E731
        done = read_cell(folder)
        existing = done["config"] if done else _saved_config(folder)
        if existing is not None and not same(existing):
            raise ConfigError(f"{folder} holds a run with another config; use another --out or delete it")
        if done is None and existing is None:
            donor = next(((src, m) for src, m in donors
                          if src.resolve() != folder.resolve() and same(m["config"])), None)
            if donor is not None:
                reuse_cell(donor[0], donor[1], folder, cell, cfg.to_dict())
                done = read_cell(folder)
        if done is not None:
            finished.append(CellResult(str(folder), "skipped", cell.values, cell.seed, done.get("metrics", {}),
                                       float(done.get("wall_time_s", 0.0))))
        else:
            jobs.append(CellJob(cfg.to_dict(), str(folder), cell.values, cell.seed, eval_spec, threads))
    return jobs, finished


def _saved_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not (folder / "checkpoints" / "last.pt").is_file() or not path.is_file():
        return None  # nothing to resume: the cell starts over whatever config.json says
    return json.loads(path.read_text())


def run_grid(jobs: Sequence[CellJob], finished: Sequence[CellResult], workers: int = 1,
             on_update: Callable[[str, CellResult | None], None] | None = None) -> GridRun:
    """Run the jobs (in this process with one worker, else in `workers` spawned processes).

    `on_update(event, result)` sees "start" (result None; once per job when it is handed out) and "end".
    """
    start = time.time()
    results = list(finished)
    notify = on_update or (lambda event, result: None)
    if workers <= 1:
        for job in jobs:
            notify("start", None)
            result = run_cell(job)
            results.append(result)
            notify("end", result)
            if result.error.startswith("InterruptedError"):
                break  # the grid was asked to stop (SIGTERM): leave the other cells for the rerun
    else:
        # spawn, not fork: forking a process that already ran torch threads can deadlock.
        context = multiprocessing.get_context("spawn")
        threads = jobs[0].threads if jobs else 1
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            pending = list(jobs)
            running = set()
            while pending or running:
                while pending and len(running) < workers:
                    running.add(pool.submit(run_cell, pending.pop(0)))
                    notify("start", None)
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    results.append(result)
                    notify("end", result)
    return GridRun(results, time.time() - start)
