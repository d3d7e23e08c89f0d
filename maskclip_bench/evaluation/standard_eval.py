"""Running a standard suite (see `standard_suites`) on one checkpoint, resumably, and scoring it from its records.

The planner builds each found dataset from CLIP_benchmark's webdataset layout and plans zero-shot classification
or retrieval for it, leaving out tasks that already have a record for the same checkpoint (content hash) in the
results folder unless `redo`; so a rerun after an interruption, or with one more dataset downloaded, evaluates only
what is new. Scores always come from the records, the fresh and the earlier ones alike
(`maskclip_bench.results.suite_table`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from maskclip_core.errors import DataError

from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.standard_suites import CLASSIFICATION, StandardTask, SuiteLayout
from maskclip_bench.evaluation.suites import PlannedTask
from maskclip_bench.evaluation.tasks import RETRIEVAL, ZEROSHOT
from maskclip_bench.results.records import load_records


def task_kind(task: StandardTask) -> str:
    """The harness' task name for a standard task: zero-shot classification or retrieval."""
    return ZEROSHOT if task.kind == CLASSIFICATION else RETRIEVAL


def task_of_dataset(dataset: str, tasks: Sequence[StandardTask]) -> StandardTask | None:
    """The suite task a record's dataset name (``wds:/root/wds_<name>``) belongs to, by its folder's name."""
    folder = Path(dataset.split(":", 1)[-1]).name
    return next((t for t in tasks if folder in t.folders), None)


def _finished(records: pd.DataFrame, checkpoint_hash: str) -> set[tuple[str, str]]:
    """(task, dataset folder name) pairs with a default-settings record for this checkpoint."""
    if records.empty:
        return set()
    mine = records[(records["checkpoint_hash"] == checkpoint_hash) & (records["variant"].fillna("") == "")]
    return {(row.task, Path(str(row.dataset).split(":", 1)[-1]).name) for row in mine.itertuples()}


def plan_standard(layout: SuiteLayout, results_dir: str | Path, redo: bool = False,
                  skipped: list[StandardTask] | None = None) -> Callable[[EvalSession], list[PlannedTask]]:
    """A planner for the found tasks of `layout`; tasks finished before for this checkpoint go to `skipped`."""

    def plan(session: EvalSession) -> list[PlannedTask]:
        done = set() if redo else _finished(load_records(results_dir), session.loaded.content_hash)
        planned = []
        for task, folder in layout.found:
            kind = task_kind(task)
            if (kind, folder.name) in done:
                if skipped is not None:
                    skipped.append(task)
                continue
            ds = session.build(f"clip_benchmark_wds:{folder}")[0]
            if ds.task != task.kind:
                raise DataError(f"{folder} holds a {ds.task} dataset; {task.title} is scored as {task.kind}")
            planned.append(PlannedTask(kind, ds, {"templates": None} if kind == ZEROSHOT else {}))
        return planned

    return plan
