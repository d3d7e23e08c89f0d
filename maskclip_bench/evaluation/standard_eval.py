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

from maskclip_bench.eval_data.dataset import EvalDataset
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.standard_suites import ASSOCIATION as ASSOCIATION_KIND
from maskclip_bench.evaluation.standard_suites import (CAPTION_SELECTION, CLASSIFICATION, StandardTask,
                                                       SuiteLayout, main_metric)
from maskclip_bench.evaluation.suites import PlannedTask
from maskclip_bench.evaluation.tasks import ASSOCIATION, RETRIEVAL, SELECTION, ZEROSHOT


_HARNESS_TASK = {CLASSIFICATION: ZEROSHOT, CAPTION_SELECTION: SELECTION, ASSOCIATION_KIND: ASSOCIATION}


def task_kind(task: StandardTask) -> str:
    """The harness' task name for a standard task: zero-shot classification, retrieval, caption selection or
    visual association."""
    return _HARNESS_TASK.get(task.kind, RETRIEVAL)


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


def _finished(records: pd.DataFrame, checkpoint_hash: str) -> dict[tuple[str, str], list[dict]]:
    """The metrics of the default-settings records for this checkpoint, by (task, dataset name)."""
    done: dict[tuple[str, str], list[dict]] = {}
    if records.empty:
        return done
    mine = records[(records["checkpoint_hash"] == checkpoint_hash) & (records["variant"] == "")]
    for row in mine.itertuples():
        done.setdefault((row.task, dataset_name(str(row.dataset))), []).append(dict(row.metrics))
    return done


def _missing_groups(ds: EvalDataset, task: StandardTask) -> str | None:
    """Why the copy cannot give the task's worst-group metric (no per-sample metadata), or None when it can;
    checked before any image is encoded, so such a copy is named and left out instead of ending a suite later."""
    reader = getattr(ds.dataset, "metadata_field", None)
    if reader is None:
        return f"'{ds.name}' is not a webdataset copy with per-sample metadata"
    try:
        reader(task.group_field)
    except DataError as exc:
        return str(exc)
    return None


def plan_standard(layout: SuiteLayout, records: pd.DataFrame, redo: bool = False,
                  skipped: list[StandardTask] | None = None,
                  unscored: list[tuple[StandardTask, str]] | None = None,
                  ) -> Callable[[EvalSession], list[PlannedTask]]:
    """A planner for the found tasks of `layout`; tasks with a record in `records` (`load_records`' frame of the
    results folder) for the session's checkpoint go to `skipped`, tasks whose copy lacks the metadata their metric
    needs go to `unscored` with the reason."""

    def plan(session: EvalSession) -> list[PlannedTask]:
        done = {} if redo else _finished(records, session.loaded.content_hash)
        planned = []
        for task, folder in layout.found:
            kind, spec = task_kind(task), task.dataset_spec(folder)
            # Finished: a record that holds the task's main metric (a plain `eval --dataset` of the same folder has
            # no worst-group accuracy, so it does not count for FMoW).
            if any(main_metric(task, m) is not None for m in done.get((kind, dataset_name(spec)), [])):
                if skipped is not None:
                    skipped.append(task)
                continue
            ds = session.build(spec)[0]
            if ds.task != task.kind:
                raise DataError(f"{folder} holds a {ds.task} dataset; {task.title} is scored as {task.kind}")
            options: dict = {}
            if kind == ZEROSHOT:
                options = {"templates": None}
                if task.group_field is not None:
                    why = _missing_groups(ds, task)
                    if why is not None:
                        if unscored is not None:
                            unscored.append((task, why))
                        continue
                    options["group_field"] = task.group_field
            planned.append(PlannedTask(kind, ds, options))
        return planned

    return plan
