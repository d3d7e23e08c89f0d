"""The field's standard suites over real datasets: DataComp's 38 scored tasks, CLIP_benchmark's collections and the
compositional suite (SugarCrepe's seven tasks and Winoground).

A suite is a list of `StandardTask`s: the dataset's name as DataComp / CLIP_benchmark write it, the main metric
it is scored by, and the groups it is averaged into. Classification and retrieval datasets are read from
CLIP_benchmark's webdataset copies under one root folder (``--dataset-root``): CLIP_benchmark's Hugging Face
copies are named ``wds_<name>`` and DataComp's ``wds_<name>_test``, with ``/`` in the name written ``-``
(DataComp also drops its ``fairness/`` prefix); either folder serves. The compositional suite's datasets have no
webdataset copies: each lives in its own folder under the root, in the layout CLIP_benchmark's reader (or the
Hugging Face repository) has (``sugar_crepe/`` and ``winoground/``, see `maskclip_bench.eval_data.caption_selection`),
and a task counts as found only when every file it needs is there; so does DataComp's WinoGAViL (``winogavil/``,
see `maskclip_bench.eval_data.winogavil`), scored by DataComp's Jaccard index of the picked and the associated
candidates. Nothing here downloads.

Every DataComp task is read (a task a suite cannot read would be listed by name with its reason, never skipped
silently; CLIP_benchmark's multi-label vtab+ datasets are). The WILDS and fairness tasks are read with their
DataComp metrics: iWildCam's macro F1 over the classes present
(``F1-macro_all``, the zero-shot records' ``f1_macro``), and the worst-group accuracies of FMoW (worst region),
Dollar Street (worst income group, top-5) and GeoDE (worst region), grouped by a field of the per-sample ``npy``
metadata in DataComp's webdataset copies (``acc1_worst_group`` / ``acc5_worst_group``).

**Flickr30K split** (``flickr_split``, ``--flickr-split``): ``karpathy`` (the default) reads CLIP_benchmark's
``wds_flickr30k``, the 1K Karpathy test that papers quote and that DataComp's tasklist has scored since 15 May 2023
(nlphuji/flickr_1k_test_image_text_retrieval); ``full`` swaps the Flickr task for all 31,014 images of
nlphuji/flickr30k (`maskclip_bench.eval_data.flickr30k_full`, read from ``nlphuji_flickr30k/`` under the root), the
split DataComp's tasklist scored before that. The two are different tasks (keys ``flickr30k`` and
``nlphuji/flickr30k``, titles "Flickr" and "Flickr (31K)", record folders ``wds_flickr30k`` and
``nlphuji_flickr30k``), so their records never stand in for each other; `flickr_note` says which one a task list
has. MSCOCO is the 5K Karpathy test in DataComp and CLIP_benchmark alike.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from maskclip_core.errors import DataError

from maskclip_bench.eval_data.caption_selection import (COCO_VAL2017_URL, SUGAR_CREPE_TASKS, SUGAR_CREPE_URL,
                                                        WINOGROUND_NEEDS, WINOGROUND_REPO, sugar_crepe_needs)
from maskclip_bench.eval_data.flickr30k_full import FLICKR30K_REPO
from maskclip_bench.eval_data.flickr30k_full import FOLDER as FLICKR30K_FULL_FOLDER
from maskclip_bench.eval_data.flickr30k_full import NEEDS as FLICKR30K_FULL_NEEDS
from maskclip_bench.eval_data.winogavil import FOLDER as WINOGAVIL_FOLDER
from maskclip_bench.eval_data.winogavil import NEEDS as WINOGAVIL_NEEDS
from maskclip_bench.eval_data.winogavil import SOURCE as WINOGAVIL_SOURCE

# Task kinds: the EvalDataset task a suite task's dataset must have, or UNSUPPORTED.
CLASSIFICATION, RETRIEVAL, CAPTION_SELECTION, ASSOCIATION, UNSUPPORTED = (
    "classification", "retrieval", "caption_selection", "association", "unsupported")
# DataComp's group averages (besides the plain average over every scored task).
IMAGENET, SHIFTS, VTAB, RETRIEVAL_GROUP = "ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval"
# The Flickr30K splits a suite can score (module docstring), the default first.
KARPATHY, FULL = "karpathy", "full"
FLICKR_SPLITS: tuple[str, ...] = (KARPATHY, FULL)
FLICKR_KARPATHY_KEY, FLICKR_FULL_KEY = "flickr30k", FLICKR30K_REPO
# What each split's task is, for the tables' and the summary's note line.
FLICKR_NOTES = {
    FLICKR_KARPATHY_KEY: "Flickr: the 1K Karpathy test (CLIP_benchmark's wds_flickr30k: 1,000 images, 5,000 "
                         "captions), the split papers quote and DataComp's tasklist has scored since May 2023; "
                         "--flickr-split full scores all 31,014 images of nlphuji/flickr30k instead",
    FLICKR_FULL_KEY: "Flickr (31K): all 31,014 images of nlphuji/flickr30k (155,070 captions; Karpathy's train, val "
                     "and test together), the split DataComp's tasklist scored before May 2023; not comparable with "
                     "the 1K Karpathy test that papers quote (--flickr-split karpathy)",
}


@dataclass(frozen=True)
class StandardTask:
    """One task of a standard suite."""

    key: str  # the dataset name DataComp / CLIP_benchmark use, e.g. "vtab/caltech101"
    title: str  # DataComp's display name, e.g. "Caltech-101"
    kind: str  # CLASSIFICATION, RETRIEVAL, CAPTION_SELECTION, ASSOCIATION or UNSUPPORTED
    # The main metric: acc1, mean_per_class_recall, f1_macro, acc1_worst_group / acc5_worst_group, mean_recall@1,
    # text_acc or acc.
    metric: str = "acc1"
    groups: tuple[str, ...] = ()
    chance: float | None = None  # the score of random guessing: DataComp's random_score, where it gives one
    reason: str = ""  # why an UNSUPPORTED task is not read
    # A task read from its own folder instead of a webdataset copy (the compositional suite): the folder under the
    # root, the paths inside it the reader needs, and how to get them there (ROOT stands for the dataset root).
    folder: str = ""
    needs: tuple[str, ...] = ()
    how_to_get: str = ""
    fetchable: bool = True  # whether `maskclip-bench data fetch KEY` can download it
    # The spec kind of this package's reader for a task in its own folder that CLIP_benchmark does not build
    # (``flickr30k_full``); empty: CLIP_benchmark's name (``clip_benchmark:KEY@FOLDER``) or its webdataset copy.
    reader: str = ""
    # The field of the per-sample ``npy`` metadata whose values are the groups of a worst-group metric.
    group_field: int | None = None

    @property
    def folders(self) -> tuple[str, ...]:
        """Folder names that hold this dataset under a dataset root: its own folder, or CLIP_benchmark's then
        DataComp's webdataset copy."""
        if self.folder:
            return (self.folder,)
        clean = self.key.removeprefix("fairness/").replace("/", "-")
        return f"wds_{self.key.replace('/', '-')}", f"wds_{clean}_test"

    @property
    def record_names(self) -> tuple[str, ...]:
        """What a record's dataset spec names this dataset by (see `standard_eval.dataset_name`): CLIP_benchmark's
        name for a task in its own folder (several tasks share one), else the folder's name."""
        return (self.key,) if self.folder and not self.reader else self.folders

    def dataset_spec(self, folder: Path) -> str:
        """The dataset spec that reads this task from `folder` (one of `folders` under a root)."""
        if self.reader:
            return f"{self.reader}:{folder}"
        return f"clip_benchmark:{self.key}@{folder}" if self.folder else f"clip_benchmark_wds:{folder}"

    def fetch_hint(self) -> str:
        """How to put this dataset under ROOT: the `data fetch` command (CLIP_benchmark's Hugging Face copy), or
        the steps for a dataset that command cannot fetch alone."""
        return self.how_to_get or f"maskclip-bench data fetch {self.key} --dataset-root ROOT"


def _cls(key: str, title: str, chance: float | None, *groups: str, metric: str = "acc1",
         group_field: int | None = None) -> StandardTask:
    return StandardTask(key, title, CLASSIFICATION, metric, groups, chance, group_field=group_field)


def _unsupported(key: str, title: str, metric: str, reason: str, *groups: str) -> StandardTask:
    return StandardTask(key, title, UNSUPPORTED, metric, groups, None, reason)


_MPCR = "mean_per_class_recall"
# DataComp's evaluation (tasklist.yml; 38 scored tasks, FairFace and UTKFace are evaluated but not scored), with
# its main metrics, random scores and the groups of its aggregate_scores.py.
DATACOMP: tuple[StandardTask, ...] = (
    _cls("vtab/caltech101", "Caltech-101", 0.009804, VTAB, metric=_MPCR),
    _cls("cifar10", "CIFAR-10", 0.1),
    _cls("vtab/cifar100", "CIFAR-100", 0.01, VTAB),
    _cls("vtab/clevr_count_all", "CLEVR Counts", 0.125061, VTAB),
    _cls("vtab/clevr_closest_object_distance", "CLEVR Distance", 0.19052, VTAB),
    _cls("country211", "Country211", 0.004739),
    _cls("vtab/dtd", "Describable Textures", 0.021277, VTAB),
    _cls("vtab/eurosat", "EuroSAT", 0.101483, VTAB),
    _cls("fgvc_aircraft", "FGVC Aircraft", 0.01, metric=_MPCR),
    _cls("food101", "Food-101", 0.009901),
    _cls("gtsrb", "GTSRB", 0.037604),
    _cls("imagenet1k", "ImageNet 1k", 0.001, IMAGENET),
    _cls("imagenet_sketch", "ImageNet Sketch", 0.001, SHIFTS),
    _cls("imagenetv2", "ImageNet v2", 0.001, SHIFTS),
    _cls("imagenet-a", "ImageNet-A", 0.008056, SHIFTS),
    _cls("imagenet-o", "ImageNet-O", 0.006047, SHIFTS),
    _cls("imagenet-r", "ImageNet-R", 0.006163, SHIFTS),
    _cls("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", 0.295289, VTAB),
    _cls("mnist", "MNIST", 0.10035),
    _cls("objectnet", "ObjectNet", 0.009481, SHIFTS),
    _cls("vtab/flowers", "Oxford Flowers-102", 0.009804, VTAB, metric=_MPCR),
    _cls("vtab/pets", "Oxford-IIIT Pet", 0.027027, VTAB, metric=_MPCR),
    _cls("voc2007", "Pascal VOC 2007", 0.154038),
    _cls("vtab/pcam", "PatchCamelyon", 0.5, VTAB),
    _cls("renderedsst2", "Rendered SST2", 0.500001),
    _cls("vtab/resisc45", "RESISC45", 0.022342, VTAB),
    _cls("cars", "Stanford Cars", 0.00516),
    _cls("stl10", "STL-10", 0.1),
    _cls("sun397", "SUN397", 0.004645, VTAB),
    _cls("vtab/svhn", "SVHN", 0.117897, VTAB),
    StandardTask("flickr30k", "Flickr", RETRIEVAL, "mean_recall@1", (RETRIEVAL_GROUP,)),
    StandardTask("mscoco_captions", "MSCOCO", RETRIEVAL, "mean_recall@1", (RETRIEVAL_GROUP,)),
    # Not a webdataset copy: WinoGAViL-experiments' annotation file and images in their own folder.
    StandardTask("misc/winogavil", "WinoGAViL", ASSOCIATION, "jaccard_score_10-12", (RETRIEVAL_GROUP,), 0.205,
                 folder=WINOGAVIL_FOLDER, needs=WINOGAVIL_NEEDS, reader="winogavil", fetchable=False,
                 how_to_get=f"git clone {WINOGAVIL_SOURCE}; in it, python download-images.py (fills assets/images/ "
                            f"from the image URLs); then copy assets/winogavil_dataset.csv and assets/images/ "
                            f"into ROOT/{WINOGAVIL_FOLDER}/"),
    # DataComp scores iWildCam by WILDS' macro F1 ("F1-macro_all"), which needs only labels and predictions.
    _cls("wilds/iwildcam", "iWildCam", 0.143056, metric="f1_macro"),
    _cls("wilds/camelyon17", "Camelyon17", 0.5),
    # Worst-group accuracies over a field of the copies' npy metadata (DataComp's wilds_eval.py and
    # fairness_eval.py name the fields): FMoW's acc_worst_region, top-1 over [region, year, y][0]; Dollar Street's
    # acc_top5_wg, top-5 over [income_ds, income_meta, region][0]; GeoDE's acc_wg, top-1 over [region, country][0].
    # DataComp's FMoW evaluator means to leave out the "Other" region, but its evaluator has no metadata map, so
    # group names are numbers and nothing is left out: every region with samples counts, as here.
    _cls("wilds/fmow", "FMoW", 0.027193, metric="acc1_worst_group", group_field=0),
    _cls("fairness/dollar_street", "Dollar Street", None, metric="acc5_worst_group", group_field=0),
    _cls("fairness/geode", "GeoDE", None, metric="acc1_worst_group", group_field=0),
)
DATACOMP_GROUPS: tuple[str, ...] = (IMAGENET, SHIFTS, VTAB, RETRIEVAL_GROUP)

# The compositional suite: SugarCrepe's seven tasks scored by text accuracy (the positive caption closer to the image
# than the hard negative; chance 0.5) and Winoground by its group score (text and image scores both right; chance
# 1/6), CLIP_benchmark's image_caption_selection metrics text_acc and acc. Groups: all of SugarCrepe, and the
# paper's three kinds of hard negative.
SUGAR_CREPE, SC_ADD, SC_REPLACE, SC_SWAP = "SugarCrepe", "SugarCrepe add", "SugarCrepe replace", "SugarCrepe swap"
_SC_GROUP = {"add": SC_ADD, "replace": SC_REPLACE, "swap": SC_SWAP}
_SC_HOW = (f"put COCO's val2017 images ({COCO_VAL2017_URL}, unzipped) in ROOT/sugar_crepe/val2017/ and "
           f"{{task}}.json ({SUGAR_CREPE_URL}) in ROOT/sugar_crepe/")
_WINOGROUND_HOW = (f"accept the terms of https://huggingface.co/datasets/{WINOGROUND_REPO}, run `huggingface-cli "
                   "login`, then `maskclip-bench data fetch winoground --dataset-root ROOT` (or put the repository's "
                   "data/examples.jsonl in ROOT/winoground/data/ and its data/images.zip extracted there, giving "
                   "ROOT/winoground/data/images/<name>.png)")


def _sugar_crepe(task: str) -> StandardTask:
    kind, what = task.split("_")
    title = f"SugarCrepe {kind.capitalize()}-{what.capitalize()}"
    return StandardTask(f"sugar_crepe/{task}", title, CAPTION_SELECTION, "text_acc", (SUGAR_CREPE, _SC_GROUP[kind]),
                        0.5, folder="sugar_crepe", needs=sugar_crepe_needs(task),
                        how_to_get=_SC_HOW.format(task=task), fetchable=False)


COMPOSITIONAL: tuple[StandardTask, ...] = (
    *(_sugar_crepe(t) for t in SUGAR_CREPE_TASKS),
    StandardTask("winoground", "Winoground", CAPTION_SELECTION, "acc", (), 1 / 6, folder="winoground",
                 needs=WINOGROUND_NEEDS, how_to_get=_WINOGROUND_HOW),
)
COMPOSITIONAL_GROUPS: tuple[str, ...] = (SUGAR_CREPE, SC_ADD, SC_REPLACE, SC_SWAP)

# Flickr30K's full split: what `--flickr-split full` puts in place of the Flickr task (its groups stay the suite's).
FLICKR_FULL = StandardTask(FLICKR_FULL_KEY, "Flickr (31K)", RETRIEVAL, "mean_recall@1",
                           folder=FLICKR30K_FULL_FOLDER, needs=FLICKR30K_FULL_NEEDS, reader="flickr30k_full")


@functools.lru_cache(maxsize=None)
def _collection(name: str) -> tuple[StandardTask, ...]:
    """One of CLIP_benchmark's dataset collections, scored by acc1 (classification) or mean recall@1."""
    from clip_benchmark.datasets.builder import dataset_collection

    known = {t.key: t for t in DATACOMP}
    out = []
    for key in dataset_collection[name]:
        if key in known:
            out.append(StandardTask(key, known[key].title, known[key].kind, known[key].metric, (), known[key].chance,
                                    known[key].reason))
        elif name == "retrieval":
            out.append(StandardTask(key, key, RETRIEVAL, "mean_recall@1"))
        elif key.endswith("_multilabel"):
            out.append(_unsupported(key, key, "mean_average_precision", "multi-label webdataset labels (npy) are "
                                    "not read"))
        else:
            out.append(_cls(key, key, math.nan))
    return tuple(out)


STANDARD_SUITES: tuple[str, ...] = ("datacomp", "vtab", "vtab+", "imagenet_robustness", "retrieval", "compositional")
# Suites with their own task list and group averages; the others are CLIP_benchmark's collections, without groups.
_OWN_SUITES = {"datacomp": (DATACOMP, DATACOMP_GROUPS), "compositional": (COMPOSITIONAL, COMPOSITIONAL_GROUPS)}


def suite_tasks(name: str, flickr_split: str = KARPATHY) -> tuple[StandardTask, ...]:
    """The tasks of a standard suite, its Flickr task on `flickr_split` (module docstring); DataError naming the
    choices for an unknown suite or split, or for the full split on a suite without Flickr."""
    if flickr_split not in FLICKR_SPLITS:
        raise DataError(f"unknown Flickr30K split '{flickr_split}' (choose {', '.join(FLICKR_SPLITS)})")
    if name in _OWN_SUITES:
        tasks = _OWN_SUITES[name][0]
    elif name in STANDARD_SUITES:
        tasks = _collection(name)
    else:
        raise DataError(f"unknown standard suite '{name}' (choose {', '.join(STANDARD_SUITES)})")
    if flickr_split == KARPATHY:
        return tasks
    if not any(t.key == FLICKR_KARPATHY_KEY for t in tasks):
        with_flickr = [s for s in STANDARD_SUITES if any(t.key == FLICKR_KARPATHY_KEY for t in suite_tasks(s))]
        raise DataError(f"--flickr-split {flickr_split}: suite '{name}' has no Flickr30K task (these do: "
                        f"{', '.join(with_flickr)})")
    return tuple(replace(FLICKR_FULL, groups=t.groups) if t.key == FLICKR_KARPATHY_KEY else t for t in tasks)


def flickr_note(tasks: Sequence[StandardTask]) -> str | None:
    """Which Flickr30K split a task list's Flickr column is (a line for tables and summaries); None without one."""
    return next((FLICKR_NOTES[t.key] for t in tasks if t.key in FLICKR_NOTES), None)


def suite_groups(name: str) -> tuple[str, ...]:
    """The group averages a suite reports besides its plain average (none for CLIP_benchmark's collections)."""
    return _OWN_SUITES[name][1] if name in _OWN_SUITES else ()


@dataclass(frozen=True)
class SuiteLayout:
    """Where a suite's datasets are under a root: found, missing (with their fetch command) and unsupported."""

    found: tuple[tuple[StandardTask, Path], ...]
    missing: tuple[StandardTask, ...]
    unsupported: tuple[StandardTask, ...]


def locate(tasks: Sequence[StandardTask], root: str | Path) -> SuiteLayout:
    """Find each task's folder under `root` (one holding every path the task `needs`); DataError when `root` is not
    a folder."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"--dataset-root {base} is not a folder")
    found, missing, unsupported = [], [], []
    for task in tasks:
        if task.kind == UNSUPPORTED:
            unsupported.append(task)
            continue
        folder = next((base / f for f in task.folders
                       if (base / f).is_dir() and all((base / f / need).exists() for need in task.needs)), None)
        if folder is None:
            missing.append(task)
        else:
            found.append((task, folder.absolute()))
    return SuiteLayout(tuple(found), tuple(missing), tuple(unsupported))


def main_metric(task: StandardTask, metrics: Mapping[str, float]) -> float | None:
    """The task's main metric from a record's metrics (mean recall@1 = the mean of the two directions)."""
    if task.metric == "mean_recall@1":
        pair = metrics.get("image_retrieval_recall@1"), metrics.get("text_retrieval_recall@1")
        return None if None in pair else 0.5 * (float(pair[0]) + float(pair[1]))
    value = metrics.get(task.metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Average:
    """A mean over the tasks that have a score, and how many of how many tasks it covers."""

    value: float
    count: int
    total: int

    @property
    def partial(self) -> bool:
        """Whether some task of the average has no score."""
        return self.count < self.total

    def label(self) -> str:
        """``0.5123`` or, when partial, ``0.5123 (partial: 33/38)``; ``n/a`` without any score."""
        if self.count == 0:
            return "n/a"
        return f"{self.value:.4f}" + (f" (partial: {self.count}/{self.total})" if self.partial else "")


def _mean(values: Sequence[float | None], total: int) -> Average:
    have = [v for v in values if v is not None]
    return Average(sum(have) / len(have) if have else math.nan, len(have), total)


def suite_averages(tasks: Sequence[StandardTask], scores: Mapping[str, float | None],
                   groups: Sequence[str] = ()) -> dict[str, Average]:
    """``{"Average": ..., <group>: ...}``: plain means of the main metrics over the suite's tasks and over each
    group's, DataComp's way (every task weighs the same); tasks without a score make an average partial."""
    out = {"Average": _mean([scores.get(t.key) for t in tasks], len(tasks))}
    for group in groups:
        members = [t for t in tasks if group in t.groups]
        out[group] = _mean([scores.get(t.key) for t in members], len(members))
    return out
