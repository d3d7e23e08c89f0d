"""Standard-suite tables (`report --suite NAME`): one row per checkpoint with the suite's average, its group
averages and every task's main metric, from the evaluation records (the latest default-settings record of each
task wins), written as ``suite_<name>.md`` and ``.csv`` (``suite_<name>_flickr_full.*`` for ``--flickr-split
full``, so the two splits' tables never overwrite each other).

Below the checkpoints come reference rows of the published numbers (`maskclip_bench.results.comparison.PUBLISHED`,
CLIP and MaskCLIP on YFCC-15M) in the columns they fit (`PUBLISHED_COLUMNS`): ImageNet 1k (zero-shot top-1), and
Flickr and MSCOCO as the mean of the published image-to-text and text-to-image R@1, DataComp's retrieval metric.
The Flickr value goes only into a Karpathy-split column (the sources quote the 1K Karpathy test); averages stay
blank, since those rows have three of a suite's tasks at most.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from maskclip_bench.evaluation.records import load_records
from maskclip_bench.evaluation.standard_eval import task_kind, task_of_dataset
from maskclip_bench.evaluation.standard_suites import (FLICKR_FULL_KEY, FLICKR_KARPATHY_KEY, KARPATHY, StandardTask,
                                                       flickr_note, main_metric, suite_averages, suite_groups,
                                                       suite_tasks)
from maskclip_bench.results.comparison import METHOD_NAMES, published_entry
from maskclip_bench.results.markdown import table_lines
from maskclip_core.atomic_write import write_text_atomic

# Suite columns (task keys) that published numbers fill: the PUBLISHED benchmarks whose mean is the task's main
# metric. Retrieval's is DataComp's mean_recall@1, the mean of the two directions' R@1. The sources quote the 1K
# Karpathy Flickr test and the 5K COCO test, so only the Karpathy Flickr task gets a value, never the full split's.
PUBLISHED_COLUMNS: dict[str, tuple[str, ...]] = {
    "imagenet1k": ("ImageNet zero-shot top-1",),
    FLICKR_KARPATHY_KEY: ("Flickr30K I2T R@1", "Flickr30K T2I R@1"),
    "mscoco_captions": ("MS-COCO I2T R@1", "MS-COCO T2I R@1"),
}
PUBLISHED_LABEL = "published: "  # how a reference row's checkpoint cell begins


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


def table_entries(rows: Sequence[Mapping[str, Any]], tasks: Sequence[StandardTask],
                  groups: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of `suite_rows` as table rows in DataComp's column order: checkpoint, Average, the group averages,
    then every task by its title."""
    table = []
    for row in rows:
        averages = row["averages"]
        entry = {"checkpoint": row["checkpoint"], "model": row["model"],
                 "tasks scored": f"{averages['Average'].count}/{averages['Average'].total}",
                 "Average": averages["Average"].value}
        entry.update({g: averages[g].value for g in groups})
        entry.update({t.title: row["scores"][t.key] for t in tasks})
        table.append(entry)
    return table


def scores_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[StandardTask],
                 groups: Sequence[str]) -> pd.DataFrame:
    """`table_entries` as a DataFrame."""
    return pd.DataFrame(table_entries(rows, tasks, groups))


def published_entries(tasks: Sequence[StandardTask], groups: Sequence[str]) -> list[dict[str, Any]]:
    """Reference rows of the published numbers in the suite's columns (module docstring), as fractions like the
    measured rows: one per method and (source, setting), only the tasks of `PUBLISHED_COLUMNS` filled, the averages
    and every other task blank (None); none for a suite without such a task."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for task in tasks:
        entries = [published_entry(b) for b in PUBLISHED_COLUMNS.get(task.key, ())]
        for method in METHOD_NAMES:
            values = [getattr(e, method) for e in entries]
            if not entries or None in values or len({(e.source, e.setting) for e in entries}) != 1:
                continue  # no number, or the directions' numbers from different sources: no mean of them
            source, setting = entries[0].source, entries[0].setting
            row = rows.setdefault((method, source, setting), {
                "checkpoint": f"{PUBLISHED_LABEL}{METHOD_NAMES[method]}, {setting}; {source}", "model": "",
                "Average": None, **{g: None for g in groups}, **{t.title: None for t in tasks}})
            row[task.title] = sum(values) / len(values) / 100  # published in percent; the tables hold fractions
    out = []
    for row in rows.values():
        filled = sum(row[t.title] is not None for t in tasks)
        row["tasks scored"] = f"{filled}/{len(tasks)} published"
        out.append({key: row[key] for key in ("checkpoint", "model", "tasks scored", "Average", *groups,
                                              *(t.title for t in tasks))})
    return out


def _published_note(tasks: Sequence[StandardTask]) -> list[str]:
    """The markdown lines that say what the published rows are and how each of their values was derived."""
    columns = [(t, PUBLISHED_COLUMNS[t.key]) for t in tasks if t.key in PUBLISHED_COLUMNS]
    derived = [f"{t.title} = " + (names[0] if len(names) == 1 else f"the mean of {' and '.join(names)}")
               for t, names in columns]
    text = (f"Rows labelled `{PUBLISHED_LABEL.strip()}` are not measured here: they are the numbers typed in from "
            "their source (`PUBLISHED` in `maskclip_bench/results/comparison.py`, also in `comparison.md`), placed "
            f"in the columns they fit: {'; '.join(derived)}.")
    if any(len(names) > 1 for _, names in columns):
        text += (" The retrieval values are derived here as DataComp's retrieval metric (the mean of the "
                 "image-to-text and text-to-image R@1) from the source's numbers, which are on the 1K Karpathy "
                 "Flickr test and the 5K COCO test.")
    if any(t.key == FLICKR_FULL_KEY for t in tasks):
        text += (" Their Flickr (31K) cell is blank: the published Flickr numbers are on the 1K Karpathy test, not "
                 "on this column's 31,014 images.")
    text += (f" Their Average and group averages are blank: they have at most {len(columns)} of the suite's "
             f"{len(tasks)} tasks, and a mean over those would not compare with a mean over the suite.")
    return [text, ""]


# What the main metrics are, for the table's header line.
_METRICS = {
    "datacomp": "DataComp's: acc1, mean per-class recall where DataComp uses it, the mean of the two recall@1 for "
                "retrieval, WILDS' macro F1 for iWildCam, the worst region's (FMoW, GeoDE) or income group's top-5 "
                "(Dollar Street) accuracy, and WinoGAViL's Jaccard index on its 10- and 12-candidate games",
    "compositional": "CLIP_benchmark's image_caption_selection: text_acc for SugarCrepe, the share of images closer to "
                     "their caption than to its hard negative; acc for Winoground, its group score, both images' "
                     "closest caption and both captions' closest image right; the SugarCrepe groups average its "
                     "tasks by kind of negative",
}


def write_suite_table(name: str, results_dir: str | Path, out: str | Path, command: str,
                      flickr_split: str = KARPATHY) -> tuple[Path, Path, int]:
    """Write ``suite_<name>.md`` and ``.csv`` (``suite_<name>_flickr_<split>.*`` for a split other than Karpathy's)
    into `out`, the published reference rows below the checkpoints; returns their paths and the number of
    checkpoints."""
    tasks, groups = suite_tasks(name, flickr_split), suite_groups(name)
    measured = table_entries(suite_rows(load_records(results_dir), tasks, groups), tasks, groups)
    published = published_entries(tasks, groups)
    table = pd.DataFrame(measured + published)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"suite_{name}" + ("" if flickr_split == KARPATHY else f"_flickr_{flickr_split}")
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
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
    note = flickr_note(tasks)
    if note:
        lines += [note + ".", ""]
    if published:
        lines += _published_note(tasks)
    lines += table_lines(list(table.columns), ([cell(v) for v in row] for row in table.itertuples(index=False)))
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return md_path, csv_path, len(measured)


def cost_lines(suite: str, costs: Sequence[Any], images_per_s: float, texts_per_s: float,
               command: str, rates_note: str = "") -> list[str]:
    """Markdown of `maskclip_bench.evaluation.suite_cost.suite_cost`: one row per task (images, texts, estimated
    hours, DataComp's tasklist time) and the total over the tasks whose counts are known; `rates_note` says where
    the rates come from (the measurement, when measured)."""
    def count(n: int | None, assumed: bool = False) -> str:
        return "n/a" if n is None else f"{n:,}" + (" (assumed)" if assumed else "")

    known = [c for c in costs if c.seconds is not None]
    rows = [(c.title, count(c.images), count(c.texts, c.assumed),
             f"{c.seconds / 3600:.2f}" if c.seconds is not None else "n/a",
             c.datacomp_time_s if c.datacomp_time_s is not None else "") for c in costs]
    rows.append(("**total**" + ("" if len(known) == len(costs) else f" ({len(known)} of {len(costs)} tasks)"),
                 count(sum(c.images for c in known) if known else None),
                 count(sum(c.texts for c in known) if known else None),
                 f"{sum(c.seconds for c in known) / 3600:.1f}" if known else "n/a",
                 sum(c.datacomp_time_s for c in costs if c.datacomp_time_s is not None) or ""))
    return [f"# Estimated cost of `--suite {suite}` at {images_per_s:g} images/s and {texts_per_s:g} texts/s", "",
            "An estimate, not a measurement: each task's images (DataComp's tasklist sizes; WinoGAViL's distinct "
            "candidate images) and texts (classes x templates of CLIP_benchmark's template file, captions, cues) "
            "divided by the rates given. \"(assumed)\": the dataset's copy carries its own template file; counted "
            "with CLIP_benchmark's fallback, ImageNet's 80. DataComp's tasklist `time` is shown as it is; the file "
            "does not say how or on what hardware it was measured.", "",
            *([f"Rates: {rates_note}.", ""] if rates_note else []),
            f"Command: `{command}`", "",
            *table_lines(["task", "images", "texts", "hours", "DataComp tasklist time, s"], rows), ""]
