"""The field's standard suites over real datasets: DataComp's 38 scored tasks and CLIP_benchmark's collections.

A suite is a list of `StandardTask`s: the dataset's name as DataComp / CLIP_benchmark write it, the main metric
DataComp scores it by, and the groups it is averaged into. Datasets are read from CLIP_benchmark's webdataset
copies under one root folder (``--dataset-root``): CLIP_benchmark's Hugging Face copies are named
``wds_<name>`` and DataComp's ``wds_<name>_test``, with ``/`` in the name written ``-`` (DataComp also drops its
``fairness/`` prefix); either folder serves. Nothing here downloads.

What is not read (each listed by name with its reason, never skipped silently): the DataComp tasks whose main
metric needs per-sample metadata or a scorer this harness does not have (WinoGAViL's Jaccard score, iWildCam's
macro F1, FMoW's worst-region accuracy, Dollar Street's and GeoDE's worst-group accuracies).

**Flickr30K split.** DataComp scores retrieval on nlphuji/flickr30k from the Hugging Face hub (all 31,014 images,
five captions each), not on the 1K Karpathy test split that papers quote. Both suites here read CLIP_benchmark's
``wds_flickr30k`` (the 1K Karpathy test), so the datacomp suite's Flickr number is the papers' split; the table
says so. MSCOCO is the 5K Karpathy test in both DataComp and CLIP_benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from maskclip_core.errors import DataError

CLASSIFICATION, RETRIEVAL, UNSUPPORTED = "classification", "retrieval", "unsupported"
# DataComp's group averages (besides the plain average over every scored task).
IMAGENET, SHIFTS, VTAB, RETRIEVAL_GROUP = "ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval"
FLICKR_SPLIT_NOTE = "Flickr: the 1K Karpathy test (DataComp scores nlphuji/flickr30k's 31,014 images)"


@dataclass(frozen=True)
class StandardTask:
    """One task of a standard suite."""

    key: str  # the dataset name DataComp / CLIP_benchmark use, e.g. "vtab/caltech101"
    title: str  # DataComp's display name, e.g. "Caltech-101"
    kind: str  # CLASSIFICATION, RETRIEVAL or UNSUPPORTED
    metric: str = "acc1"  # the main metric: acc1, mean_per_class_recall or mean_recall@1
    groups: tuple[str, ...] = ()
    chance: float | None = None  # DataComp's random_score, where it gives one
    reason: str = ""  # why an UNSUPPORTED task is not read

    @property
    def folders(self) -> tuple[str, ...]:
        """Folder names that hold this dataset under a dataset root: CLIP_benchmark's, then DataComp's."""
        clean = self.key.removeprefix("fairness/").replace("/", "-")
        return f"wds_{self.key.replace('/', '-')}", f"wds_{clean}_test"

    def fetch_hint(self) -> str:
        """The command that would put this dataset under ROOT (CLIP_benchmark's Hugging Face copy)."""
        return f"maskclip-bench data fetch {self.key} --dataset-root ROOT"


def _cls(key: str, title: str, chance: float, *groups: str, metric: str = "acc1") -> StandardTask:
    return StandardTask(key, title, CLASSIFICATION, metric, groups, chance)


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
    _unsupported("misc/winogavil", "WinoGAViL", "jaccard_score_10-12",
                 "its Jaccard score over candidate associations has no scorer here", RETRIEVAL_GROUP),
    _unsupported("wilds/iwildcam", "iWildCam", "F1-macro_all", "its main metric, macro F1, is not computed yet"),
    _cls("wilds/camelyon17", "Camelyon17", 0.5),
    _unsupported("wilds/fmow", "FMoW", "acc_worst_region", "its worst-region accuracy needs WILDS' region metadata"),
    _unsupported("fairness/dollar_street", "Dollar Street", "acc_top5_wg",
                 "its worst-group accuracy needs the income-group metadata"),
    _unsupported("fairness/geode", "GeoDE", "acc_wg", "its worst-group accuracy needs the region metadata"),
)
DATACOMP_GROUPS: tuple[str, ...] = (IMAGENET, SHIFTS, VTAB, RETRIEVAL_GROUP)


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


STANDARD_SUITES: tuple[str, ...] = ("datacomp", "vtab", "vtab+", "imagenet_robustness", "retrieval")


def suite_tasks(name: str) -> tuple[StandardTask, ...]:
    """The tasks of a standard suite; DataError naming the choices for an unknown one."""
    if name == "datacomp":
        return DATACOMP
    if name in STANDARD_SUITES:
        return _collection(name)
    raise DataError(f"unknown standard suite '{name}' (choose {', '.join(STANDARD_SUITES)})")


@dataclass(frozen=True)
class SuiteLayout:
    """Where a suite's datasets are under a root: found, missing (with their fetch command) and unsupported."""

    found: tuple[tuple[StandardTask, Path], ...]
    missing: tuple[StandardTask, ...]
    unsupported: tuple[StandardTask, ...]


def locate(tasks: Sequence[StandardTask], root: str | Path) -> SuiteLayout:
    """Find each task's folder under `root`; DataError when `root` is not a folder."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"--dataset-root {base} is not a folder")
    found, missing, unsupported = [], [], []
    for task in tasks:
        if task.kind == UNSUPPORTED:
            unsupported.append(task)
            continue
        folder = next((base / f for f in task.folders if (base / f).is_dir()), None)
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
