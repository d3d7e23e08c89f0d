"""Running a standard suite (see `standard_suites`) on one checkpoint, resumably, and scoring it from its records.

The planner builds each found dataset (from CLIP_benchmark's webdataset layout, or from its own folder for the
compositional suite) and plans zero-shot classification, retrieval or image-caption selection for it, leaving out
tasks that already have a record for the same checkpoint (content hash) among the records given, unless `redo`;
so a rerun after an interruption, or with one more dataset downloaded, evaluates only what is new. Scores always
come from the records, the fresh and the earlier ones alike (`maskclip_bench.results.suite_table`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from maskclip_core.errors import DataError

from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.standard_suites import (CAPTION_SELECTION, CLASSIFICATION, StandardTask,
                                                       SuiteLayout)
from maskclip_bench.evaluation.suites import PlannedTask
from maskclip_bench.evaluation.tasks import RETRIEVAL, SELECTION, ZEROSHOT


def task_kind(task: StandardTask) -> str:
    """The harness' task name for a standard task: zero-shot classification, retrieval or caption selection."""
    return {CLASSIFICATION: ZEROSHOT, CAPTION_SELECTION: SELECTION}.get(task.kind, RETRIEVAL)


def dataset_name(dataset: str) -> str:
    """What a dataset spec (a record's ``dataset``) names a suite dataset by: NAME in ``clip_benchmark:NAME@ROOT``
    (the seven SugarCrepe tasks share one folder), else the folder's name (``wds:/root/wds_<name>`` ->
    ``wds_<name>``, the same for ``clip_benchmark_wds:``)."""
    kind, _, rest = dataset.partition(":")
    if kind == "clip_benchmark":
        return rest.partition("@")[0]
    return Path(rest or kind).name


def task_of_dataset(dataset: str, tasks: Sequence[StandardTask]) -> StandardTask | None:
    """The suite task a record's dataset spec belongs to (see `dataset_name`)."""
    name = dataset_name(dataset)
    return next((t for t in tasks if name in t.record_names), None)


def _finished(records: pd.DataFrame, checkpoint_hash: str) -> set[tuple[str, str]]:
    """(task, dataset name) pairs with a default-settings record for this checkpoint."""
    if records.empty:
        return set()
    mine = records[(records["checkpoint_hash"] == checkpoint_hash) & (records["variant"] == "")]
    return {(row.task, dataset_name(str(row.dataset))) for row in mine.itertuples()}


def plan_standard(layout: SuiteLayout, records: pd.DataFrame, redo: bool = False,
                  skipped: list[StandardTask] | None = None) -> Callable[[EvalSession], list[PlannedTask]]:
    """A planner for the found tasks of `layout`; tasks with a record in `records` (`load_records`' frame of the
    results folder) for the session's checkpoint go to `skipped`."""

    def plan(session: EvalSession) -> list[PlannedTask]:
        done = set() if redo else _finished(records, session.loaded.content_hash)
        planned = []
        for task, folder in layout.found:
            kind, spec = task_kind(task), task.dataset_spec(folder)
            if (kind, dataset_name(spec)) in done:
                if skipped is not None:
                    skipped.append(task)
                continue
            ds = session.build(spec)[0]
            if ds.task != task.kind:
                raise DataError(f"{folder} holds a {ds.task} dataset; {task.title} is scored as {task.kind}")
            planned.append(PlannedTask(kind, ds, {"templates": None} if kind == ZEROSHOT else {}))
        return planned

    return plan
