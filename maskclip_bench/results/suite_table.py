"""Standard-suite tables (`report --suite NAME`): one row per checkpoint with the suite's average, its group
averages and every task's main metric, from the evaluation records (the latest default-settings record of each
task wins), written as ``suite_<name>.md`` and ``.csv``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from maskclip_core.atomic_write import write_text_atomic

from maskclip_bench.evaluation.standard_eval import task_kind, task_of_dataset
from maskclip_bench.evaluation.standard_suites import (FLICKR_SPLIT_NOTE, StandardTask, main_metric, suite_averages,
                                                       suite_groups, suite_tasks)
from maskclip_bench.results.markdown import table_lines
from maskclip_bench.results.records import load_records


def checkpoint_scores(records: pd.DataFrame, tasks: Sequence[StandardTask]) -> dict[str, float | None]:
    """{task key: main metric} from one checkpoint's records (the latest default-settings record of each task)."""
    scores: dict[str, float | None] = {t.key: None for t in tasks}
    if records.empty:
        return scores
    for row in records.sort_values("timestamp").itertuples():
        task = task_of_dataset(str(row.dataset), tasks)
        if task is None or (row.variant or "") != "" or row.task != task_kind(task):
            continue
        value = main_metric(task, row.metrics)
        if value is not None:
            scores[task.key] = value
    return scores


def suite_rows(records: pd.DataFrame, tasks: Sequence[StandardTask], groups: Sequence[str]) -> list[dict[str, Any]]:
    """One row per checkpoint of `records` (`load_records`' frame) that has a record of the suite: its name, averages
    and scores."""
    rows: list[dict[str, Any]] = []
    if records.empty:
        return rows
    for checkpoint_hash, mine in records.groupby("checkpoint_hash", sort=False):
        scores = checkpoint_scores(mine, tasks)
        if all(v is None for v in scores.values()):
            continue
        averages = suite_averages(tasks, scores, groups)
        rows.append({"checkpoint": str(mine["checkpoint"].iloc[-1]), "model": str(mine["model"].iloc[-1]),
                     "checkpoint_hash": str(checkpoint_hash), "averages": averages, "scores": scores})
    return rows


def scores_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[StandardTask],
                 groups: Sequence[str]) -> pd.DataFrame:
    """DataComp's column order: checkpoint, Average, the group averages, then every task by its title."""
    table = []
    for row in rows:
        averages = row["averages"]
        entry = {"checkpoint": row["checkpoint"], "model": row["model"],
                 "tasks scored": f"{averages['Average'].count}/{averages['Average'].total}",
                 "Average": averages["Average"].value}
        entry.update({g: averages[g].value for g in groups})
        entry.update({t.title: row["scores"][t.key] for t in tasks})
        table.append(entry)
    return pd.DataFrame(table)


# What the main metrics are, for the table's header line.
_METRICS = {
    "datacomp": "DataComp's: acc1, mean per-class recall where DataComp uses it, the mean of the two recall@1 for "
                "retrieval",
    "compositional": "CLIP_benchmark's image_caption_selection: text_acc for SugarCrepe, the share of images closer to "
                     "their caption than to its hard negative; acc for Winoground, its group score, both images' "
                     "closest caption and both captions' closest image right; the SugarCrepe groups average its "
                     "tasks by kind of negative",
}


def write_suite_table(name: str, results_dir: str | Path, out: str | Path, command: str) -> tuple[Path, Path, int]:
    """Write ``suite_<name>.md`` and ``.csv`` into `out`; returns their paths and the number of checkpoints."""
    tasks, groups = suite_tasks(name), suite_groups(name)
    table = scores_table(suite_rows(load_records(results_dir), tasks, groups), tasks, groups)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"suite_{name}.csv", out / f"suite_{name}.md"
    write_text_atomic(csv_path, table.to_csv(index=False))

    def cell(value: Any) -> str:
        if value is None:  # a task without a score: blank, as in the CSV
            return ""
        if isinstance(value, float):
            return "" if value != value else f"{100 * value:.1f}"
        return str(value)

    lines = [f"# Standard suite: {name}", "", f"Produced by: `{command}`.", "",
             f"Main metric of each task in percent ({_METRICS.get(name, _METRICS['datacomp'])}); Average and the "
             "group averages are plain means over the tasks with a score, and `tasks scored` says how many of the "
             "suite's tasks that is: an average over fewer than all is partial and not comparable with a full one.",
             ""]
    if name in ("datacomp", "retrieval"):
        lines += [FLICKR_SPLIT_NOTE + ".", ""]
    lines += table_lines(list(table.columns), ([cell(v) for v in row] for row in table.itertuples(index=False)))
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return md_path, csv_path, len(table)
