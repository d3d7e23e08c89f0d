"""Benchmark tables from evaluation records (``maskclip-bench report``).

All records of a results folder or ablation tree are read with pandas (`records.load_record_trees`); when a
checkpoint was evaluated on the same dataset, split, task and variant more than once, the latest record wins. Written:

* ``benchmark.csv`` and ``benchmark.md``: one row per checkpoint (content hash) with its model, method
  and key training-config columns, and one column per dataset and metric named
  ``<dataset>/<metric>`` with CLIP_benchmark's metric keys, e.g. ``shapes/shape_color/acc1`` or
  ``shapes/retrieval/image_retrieval_recall@5``; a non-test split adds ``@<split>`` to the dataset and a
  variant (non-default setting such as ``features=post``) adds ``[<variant>]`` after the metric;
* ``benchmark_long.csv``: one row per (checkpoint, dataset, task) in the layout of CLIP_benchmark's
  ``clip_benchmark build`` output (``dataset, model, pretrained, task, <metrics...>, model_fullname``), with
  ``pretrained`` the checkpoint path, so both can be set side by side.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from maskclip_bench.evaluation.records import (DEFAULT_RESULTS_DIR, KEY_CONFIG_FIELDS, TASKS, load_record_trees,
                                               metric_column)
from maskclip_bench.results.markdown import table_lines
from maskclip_core.atomic_write import write_text_atomic

DEDUP_KEY = ["checkpoint_hash", "dataset", "split", "task", "variant"]
CHECKPOINT_COLUMNS = ["checkpoint_hash", "checkpoint", "model", "checkpoint_kind", "checkpoint_step",
                      *(name for name, _ in KEY_CONFIG_FIELDS)]


def latest_records(records: pd.DataFrame) -> pd.DataFrame:
    """One record per (checkpoint hash, dataset, split, task, variant): the one with the latest timestamp."""
    if records.empty:
        return records
    ordered = records.sort_values("timestamp", kind="stable")
    return ordered.drop_duplicates(DEDUP_KEY, keep="last").reset_index(drop=True)


def long_metrics(records: pd.DataFrame) -> pd.DataFrame:
    """Latest records exploded to one row per metric: checkpoint columns + column, metric, value."""
    rows = []
    for rec in latest_records(records).to_dict("records"):
        for metric, value in (rec.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
                continue  # only numbers go into the tables
            rows.append({**{c: rec.get(c) for c in CHECKPOINT_COLUMNS}, "timestamp": rec.get("timestamp"),
                         "dataset": rec["dataset"], "task": rec["task"],
                         "column": metric_column(rec["dataset"], metric, rec.get("split"), rec.get("variant") or ""),
                         "value": float("nan") if value is None else float(value)})
    return pd.DataFrame(rows, columns=[*CHECKPOINT_COLUMNS, "timestamp", "dataset", "task", "column", "value"])


def wide_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint hash: checkpoint/config columns, then one column per dataset/metric."""
    long = long_metrics(records)
    if long.empty:
        return pd.DataFrame(columns=CHECKPOINT_COLUMNS)
    values = long.pivot_table(index="checkpoint_hash", columns="column", values="value", aggfunc="last",
                              dropna=False)
    # Columns grouped by dataset (sorted), then task, keeping each evaluator's own metric order
    # (acc1, acc5, ...; recall@1, @5, @10) rather than sorting metric names as text.
    order = long.drop_duplicates("column").reset_index(drop=True)
    order["first"] = order.index
    order["task_rank"] = order["task"].map(lambda t: TASKS.index(t) if t in TASKS else len(TASKS))
    order = order.sort_values(["dataset", "task_rank", "first"], kind="stable")["column"].tolist()
    values = values.reindex(columns=order)
    # Describe each checkpoint by its most recent record (its path may have changed since).
    info = long.sort_values("timestamp", kind="stable").drop_duplicates("checkpoint_hash", keep="last")
    info = info.set_index("checkpoint_hash")[CHECKPOINT_COLUMNS[1:]]
    table = info.join(values, how="right").reset_index()
    table.columns.name = None
    return table.sort_values(["model", "method", "checkpoint_hash"], na_position="last",
                             kind="stable").reset_index(drop=True)


def clip_benchmark_table(records: pd.DataFrame) -> pd.DataFrame:
    """Latest records in the layout of ``clip_benchmark build``: dataset, model, pretrained, task, metrics..."""
    latest = latest_records(records)
    if latest.empty:
        return pd.DataFrame(columns=["dataset", "model", "pretrained", "task"])
    rows = []
    for rec in latest.to_dict("records"):
        row = {"dataset": rec["dataset"], "model": rec.get("model"), "pretrained": rec.get("checkpoint"),
               "task": rec["task"]}
        row.update(rec.get("metrics") or {})
        row.update({"model_fullname": f"{rec.get('model')} {rec.get('checkpoint')}",
                    "checkpoint_hash": rec.get("checkpoint_hash"), "split": rec.get("split"),
                    "variant": rec.get("variant") or "", "method": rec.get("method"),
                    "timestamp": rec.get("timestamp")})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' own needs the optional `tabulate` package)."""
    rows = ([_cell(v) for v in row] for row in table.itertuples(index=False))
    return "\n".join(table_lines([str(c) for c in table.columns], rows)) + "\n"


@dataclass
class ReportFiles:
    """Paths written by `write_report` and the tables behind them."""

    markdown: Path
    csv: Path
    long_csv: Path
    table: pd.DataFrame
    num_records: int


def write_report(results_dir: str | os.PathLike[str] = DEFAULT_RESULTS_DIR,
                 out_dir: str | os.PathLike[str] = "results") -> ReportFiles:
    """Read every record under `results_dir` and write benchmark.md, benchmark.csv, benchmark_long.csv."""
    records = load_record_trees([results_dir])
    table = wide_table(records)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, long_path = out / "benchmark.csv", out / "benchmark.md", out / "benchmark_long.csv"
    write_text_atomic(csv_path, table.to_csv(index=False))
    shown = table.copy()
    if "checkpoint_hash" in shown:
        shown["checkpoint_hash"] = shown["checkpoint_hash"].astype(str).str[:12]
    md = (f"# Benchmark\n\n{len(table)} checkpoint(s) from {len(records)} record(s) in `{results_dir}`; "
          "latest record wins for repeated evaluations. Full hashes and paths: `benchmark.csv`.\n\n"
          + to_markdown(shown))
    write_text_atomic(md_path, md)
    write_text_atomic(long_path, clip_benchmark_table(records).to_csv(index=False))
    return ReportFiles(markdown=md_path, csv=csv_path, long_csv=long_path, table=table, num_records=len(records))
