"""Training curves of several runs on one figure per metric (`maskclip-bench report --curves RUN...`).

`load_curves` reads each run folder's ``metrics.jsonl`` into one long frame (run, step, samples_seen, wall_s,
metric, value); `plot_curves` writes one PNG per metric with two panels, the metric against samples seen and
against training wall seconds, every run a line on the same axes.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from maskclip_core.atomic_write import write_bytes_atomic
from maskclip_core.errors import DataError
from maskclip_core.runlog import LOSS_KEYS, read_metrics

# Training loss terms that are plotted; every "eval/..." key is plotted too. Bookkeeping (lr, logit_scale,
# epoch, eval_s, ...) is not.
CURVE_LOSSES = ("loss", *LOSS_KEYS)
COLUMNS = ["run", "step", "samples_seen", "wall_s", "metric", "value"]
# The two x axes of every figure: frame column and axis label.
X_AXES = (("samples_seen", "samples seen"), ("wall_s", "training wall seconds"))


def is_curve_metric(key: str) -> bool:
    """Whether a metrics.jsonl key is plotted: a loss term or an evaluation metric."""
    return key in CURVE_LOSSES or key.startswith("eval/")


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Legend label per run: the folder name, or ``parent/name`` for runs whose folder names collide."""
    names = [Path(r).name for r in runs]
    return [f"{Path(r).parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


def _finite(value: Any) -> bool:
    # bool is an int to Python, but a true/false flag is no curve value
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist")
    if not path.is_file():
        raise DataError(f"run folder {run} has no metrics.jsonl")
    try:
        records = read_metrics(path)
    except ValueError as exc:  # a torn or hand-edited line; json's message names line and column
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not records:
        raise DataError(f"{path} has no lines")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{path}: record {number} is not a JSON object with an integer \"step\"")
    return records


def _samples_per_step(run: Path) -> int:
    """Training samples per optimizer step from the run's config.json: run.batch_size * run.accum_freq."""
    path = run / "config.json"
    try:
        cfg = json.loads(path.read_text())
        batch = cfg["run"]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{run}/metrics.jsonl has no samples_seen and {path} gives no run.batch_size to derive "
                        f"it from ({type(exc).__name__}: {exc})") from exc
    return int(batch) * int(cfg["run"].get("accum_freq", 1))


def load_curves(runs: Sequence[Path]) -> pd.DataFrame:
    """One row per (run, logged line, plotted metric) with a finite value, columns `COLUMNS`.

    Runs logged before the trainer wrote ``samples_seen`` get it derived as step * run.batch_size *
    run.accum_freq from the run's config.json (this is per process: a multi-process run's count comes out
    world-size times too small, since config.json does not record the world size), with a warning. Runs without
    ``wall_s`` get NaN there, with a warning, and are left out of the wall-seconds panel. Raises DataError when a
    run folder does not exist, has no metrics.jsonl, or its metrics.jsonl has no lines.
    """
    rows: list[dict[str, Any]] = []
    for run, label in zip(runs, run_labels(runs)):
        run = Path(run)
        records = _records(run)
        derived = [r for r in records if r.get("samples_seen") is None]
        per_step = _samples_per_step(run) if derived else 0
        if derived:
            warnings.warn(f"{run}: {len(derived)} of {len(records)} metrics.jsonl lines have no samples_seen; "
                          f"derived as step x {per_step} (run.batch_size x run.accum_freq)", stacklevel=2)
        if any(r.get("wall_s") is None for r in records):
            warnings.warn(f"{run}: metrics.jsonl lines without wall_s are left out of the wall-seconds plots",
                          stacklevel=2)
        for r in records:
            samples = r.get("samples_seen")
            wall = r.get("wall_s")
            base = {"run": label, "step": int(r["step"]),
                    "samples_seen": int(samples) if samples is not None else int(r["step"]) * per_step,
                    "wall_s": float(wall) if wall is not None else math.nan}
            rows += [{**base, "metric": k, "value": float(v)} for k, v in r.items()
                     if is_curve_metric(k) and _finite(v)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _pyplot() -> Any:
    import matplotlib  # heavy, and only needed for plotting

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def curve_figure(frame: pd.DataFrame, metric: str) -> Any:
    """A matplotlib Figure for `metric`: two panels (x = samples seen, x = training wall seconds), one line per
    run in each (a run without wall_s is missing from the second), same colour per run in both, legend."""
    plt = _pyplot()
    part = frame[frame["metric"] == metric]
    runs = list(dict.fromkeys(frame["run"]))  # colour by position among all runs: the same run, the same colour
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110, sharey=True)
    for ax, (x, x_label) in zip(axes, X_AXES):
        for i, run in enumerate(runs):
            line = part[(part["run"] == run) & part[x].notna()].sort_values("step")
            if line.empty:
                continue
            # eval metrics come every few hundred steps: markers show where the points are
            ax.plot(line[x], line["value"], marker="o" if len(line) < 30 else None, markersize=3, color=f"C{i}",
                    label=run)
        if not ax.get_lines():
            ax.text(0.5, 0.5, f"no run logged {x}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel(metric.rsplit("/", 1)[-1])  # the whole name is the title
    fig.suptitle(metric, fontsize=10)
    fig.tight_layout()
    return fig


def curve_file_name(metric: str) -> str:
    """PNG file name for a metric: every character but letters and digits becomes "_" ("/" and "@" included)."""
    return "".join(ch if ch.isalnum() else "_" for ch in metric).strip("_") + ".png"


def plot_curves(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one PNG per metric in `frame` (see `curve_figure`) into `out_dir`; returns the paths written."""
    plt = _pyplot()
    written: list[Path] = []
    for metric in dict.fromkeys(frame["metric"]):
        fig = curve_figure(frame, metric)
        written.append(write_bytes_atomic(Path(out_dir) / curve_file_name(metric),
                                          lambda f, fig=fig: fig.savefig(f, format="png")))
        plt.close(fig)
    return written
